"""The demo data set's tables for its other prompt families (`data_tools.demo`): countries,
everyday goals with tips, tone rewrites and hand-written why/how answers. Our own short,
plain-English content; the entity facts are in `data_tools.demo_facts`.

Pure data, no logic.
"""

from __future__ import annotations

from typing import NamedTuple


class Country(NamedTuple):
    name: str
    capital: str
    continent: str
    fact: str


COUNTRIES: tuple[Country, ...] = (
    Country("France", "Paris", "Europe", "France is famous for the Eiffel Tower and its cheeses."),
    Country("Japan", "Tokyo", "Asia", "Japan is an island nation known for Mount Fuji and fast trains."),
    Country("Brazil", "Brasília", "South America", "Brazil holds most of the Amazon rainforest."),
    Country("Canada", "Ottawa", "North America", "Canada is the second largest country by area."),
    Country("Australia", "Canberra", "Oceania", "Australia is home to kangaroos and the Great Barrier Reef."),
    Country("Egypt", "Cairo", "Africa", "Egypt is known for the pyramids and the River Nile."),
    Country("India", "New Delhi", "Asia", "India is one of the most populous countries in the world."),
    Country("Kenya", "Nairobi", "Africa", "Kenya is famous for its wildlife and long-distance runners."),
    Country("Mexico", "Mexico City", "North America", "Mexico is known for ancient Maya and Aztec ruins."),
    Country("Italy", "Rome", "Europe", "Italy is known for pasta, pizza and Renaissance art."),
    Country("Germany", "Berlin", "Europe", "Germany has the largest economy in Europe."),
    Country("Spain", "Madrid", "Europe", "Spain is known for flamenco music and sunny beaches."),
    Country("Argentina", "Buenos Aires", "South America", "Argentina is the birthplace of the tango."),
    Country("China", "Beijing", "Asia", "China is home to the Great Wall and giant pandas."),
    Country("Norway", "Oslo", "Europe", "Norway is famous for its deep fjords."),
    Country("Peru", "Lima", "South America", "Peru is home to the ancient city of Machu Picchu."),
    Country("Nigeria", "Abuja", "Africa", "Nigeria is the most populous country in Africa."),
    Country("South Korea", "Seoul", "Asia", "South Korea is a leading maker of electronics."),
    Country("Greece", "Athens", "Europe", "Greece is the birthplace of the Olympic Games."),
    Country("Chile", "Santiago", "South America", "Chile is a long, narrow country along the Andes."),
    Country("Thailand", "Bangkok", "Asia", "Thailand is known for its temples and spicy food."),
    Country("New Zealand", "Wellington", "Oceania", "New Zealand is home to the flightless kiwi bird."),
    Country("Morocco", "Rabat", "Africa", "Morocco is known for its busy markets and the Atlas Mountains."),
    Country("Portugal", "Lisbon", "Europe", "Portugal was a great seafaring nation in the age of exploration."),
    Country("Sweden", "Stockholm", "Europe", "Sweden is a Nordic country with thousands of lakes."),
    Country("Ghana", "Accra", "Africa", "Ghana is one of the world's largest producers of cocoa."),
    Country("Vietnam", "Hanoi", "Asia", "Vietnam is known for Ha Long Bay and its rice terraces."),
    Country("Poland", "Warsaw", "Europe", "Poland is the birthplace of the scientist Marie Curie."),
)


class Goal(NamedTuple):
    gerund: str  # "sleeping better" (after "tips for")
    verb: str  # "sleep better" (after "How can I")
    tips: tuple[str, ...]  # 4 standalone one-sentence tips


GOALS: tuple[Goal, ...] = (
    Goal("sleeping better", "sleep better",
         ("Go to bed and wake up at the same time every day.", "Keep your bedroom dark, quiet and cool.",
          "Avoid screens for an hour before bed.", "Skip coffee and tea after lunch.")),
    Goal("drinking more water", "drink more water",
         ("Keep a full water bottle with you.", "Drink a glass of water with every meal.",
          "Add lemon or cucumber slices for flavour.", "Set reminders on your phone to take a sip.")),
    Goal("learning to code", "learn to code",
         ("Start with a beginner-friendly language such as Python.", "Write a little code every day.",
          "Build a small project that interests you.", "Read other people's code to learn new patterns.")),
    Goal("studying for an exam", "study for an exam",
         ("Spread your study sessions over several days.", "Test yourself instead of only rereading notes.",
          "Take a short break every 25 to 50 minutes.", "Sleep well the night before the exam.")),
    Goal("saving money", "save money",
         ("Write down everything you spend for a month.", "Move some money into savings on payday.",
          "Cook at home more often.", "Wait a day before making big purchases.")),
    Goal("reducing stress", "reduce stress",
         ("Take a short walk outside.", "Breathe slowly and deeply for a few minutes.",
          "Write your worries down on paper.", "Talk to a friend you trust.")),
    Goal("cooking rice", "cook rice well",
         ("Rinse the rice until the water runs clear.", "Use about one and a half cups of water per cup of rice.",
          "Keep the lid on while the rice simmers.", "Let the rice rest for five minutes before serving.")),
    Goal("writing clean code", "write clean code",
         ("Give variables clear, descriptive names.", "Keep each function small and focused on one job.",
          "Delete code that is no longer used.", "Write tests for the code you change.")),
    Goal("staying focused", "stay focused",
         ("Put your phone in another room.", "Work on one task at a time.",
          "Set a timer for a focused work session.", "Keep your desk clear of clutter.")),
    Goal("eating healthier", "eat healthier",
         ("Add a vegetable to every meal.", "Choose water instead of sugary drinks.",
          "Eat whole grains instead of white bread.", "Plan your meals for the week ahead.")),
    Goal("starting to run", "start running",
         ("Begin with short runs mixed with walking.", "Wear comfortable shoes that fit well.",
          "Increase your distance slowly each week.", "Warm up with a few minutes of brisk walking.")),
    Goal("keeping houseplants alive", "keep houseplants alive",
         ("Check the soil before watering.", "Put each plant where it gets the right amount of light.",
          "Use pots with drainage holes.", "Wipe dust off the leaves now and then.")),
    Goal("debugging a program", "debug a program",
         ("Read the whole error message carefully.", "Reproduce the bug with the smallest possible input.",
          "Print or log values to check your assumptions.", "Change one thing at a time and test again.")),
    Goal("making friends in a new city", "make friends in a new city",
         ("Join a club or class about something you enjoy.", "Say yes to invitations, even small ones.",
          "Volunteer for a local cause.", "Be patient, because friendships take time to grow.")),
    Goal("baking bread at home", "bake bread at home",
         ("Weigh your flour instead of using cups.", "Use lukewarm water so the yeast stays alive.",
          "Let the dough rise until it doubles in size.", "Bake until the loaf sounds hollow when tapped.")),
)


# (style, original, rewritten): the rewrite keeps the meaning words and changes only the tone.
REWRITES: tuple[tuple[str, str, str], ...] = (
    ("polite", "Give me the report now.", "Could you please send me the report when you have a moment?"),
    ("polite", "Close the window.", "Would you mind closing the window, please?"),
    ("polite", "Move your car.", "Could you please move your car?"),
    ("polite", "Stop talking during the meeting.", "Could we please keep the meeting quiet so everyone can hear?"),
    ("polite", "Send me the file.", "Could you please send me the file?"),
    ("polite", "Call me back tomorrow.", "Would you please call me back tomorrow?"),
    ("polite", "Fix this bug today.", "Could you please fix this bug today?"),
    ("polite", "Turn the music down.", "Would you mind turning the music down a little?"),
    ("formal", "Hey, can you check my essay?", "Hello, would you be able to review my essay?"),
    ("formal", "The meeting got moved to Friday.", "The meeting has been rescheduled to Friday."),
    ("formal", "We need more cash for the project.", "The project requires additional funding."),
    ("formal", "Thanks a lot for the help!", "Thank you very much for your assistance."),
    ("formal", "The boss wants the numbers by Monday.", "The manager has requested the figures by Monday."),
    ("formal", "Sorry, I can't come to the party.", "I regret that I will be unable to attend the party."),
    ("formal", "Our sales went up a lot this year.", "Our sales increased significantly this year."),
    ("formal", "Let me know what you think.", "Please let me know your thoughts at your convenience."),
    ("simple", "The precipitation was exceptionally heavy throughout the afternoon.", "It rained very hard all afternoon."),
    ("simple", "Please ensure the door is securely fastened upon departure.", "Please lock the door when you leave."),
    ("simple", "The medication should be ingested twice daily.", "Take the medicine twice a day."),
    ("simple", "The vehicle was travelling at an excessive velocity.", "The car was going too fast."),
    ("simple", "Individuals must refrain from smoking on the premises.", "People must not smoke here."),
    ("simple", "The feline consumed its meal with considerable enthusiasm.", "The cat ate its food eagerly."),
    ("simple", "We commenced the excursion at dawn.", "We started the trip at sunrise."),
    ("simple", "The structure sustained substantial damage in the storm.", "The building was badly damaged in the storm."),
    ("shorter", "In my personal opinion, I think that the movie was really very good.", "I think the movie was very good."),
    ("shorter", "Due to the fact that it was raining, the game was cancelled.", "The game was cancelled because it was raining."),
    ("shorter", "At this point in time, we are not able to accept new orders.", "We cannot accept new orders now."),
    ("shorter", "She made the decision to go for a walk in the park.", "She decided to walk in the park."),
    ("shorter", "The reason why I am late is because the bus was delayed.", "I am late because the bus was delayed."),
    ("shorter", "In the event that you need help, please do not hesitate to ask.", "If you need help, please ask."),
    ("shorter", "He gave a presentation that was long and also quite boring.", "His presentation was long and boring."),
    ("shorter", "The garden is a place where many different kinds of flowers grow.", "Many kinds of flowers grow in the garden."),
    ("grammar", "She don't like apples.", "She doesn't like apples."),
    ("grammar", "Me and him went to the store.", "He and I went to the store."),
    ("grammar", "There is three books on the table.", "There are three books on the table."),
    ("grammar", "I seen that movie last week.", "I saw that movie last week."),
    ("grammar", "Their going to the beach tomorrow.", "They're going to the beach tomorrow."),
    ("grammar", "The dog wagged it's tail.", "The dog wagged its tail."),
    ("grammar", "He runned to the bus stop.", "He ran to the bus stop."),
    ("grammar", "We was late for class.", "We were late for class."),
    ("positive", "This plan will probably fail.", "This plan has a real chance if we work on the weak spots."),
    ("positive", "I am bad at maths.", "I am still improving at maths."),
    ("positive", "The weather ruined our picnic.", "The weather moved our picnic indoors, which was cosy."),
    ("positive", "The test was too hard for me.", "The test showed me what to practise next."),
    ("positive", "Nobody came to my first talk.", "My first talk was a good rehearsal for the next one."),
)

REWRITE_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "polite": ("Rewrite this sentence to be more polite: ", "Make this request more polite: "),
    "formal": ("Rewrite this sentence in a formal tone: ", "Make this sentence more formal: "),
    "simple": ("Rewrite this sentence in simple words: ", "Simplify this sentence: "),
    "shorter": ("Rewrite this sentence to be shorter: ", "Make this sentence more concise: "),
    "grammar": ("Fix the grammar in this sentence: ", "Correct the grammar: "),
    "positive": ("Rewrite this sentence in a more positive way: ", "Give this sentence a positive tone: "),
}


# Hand-written short answers: why/how questions and small programming how-tos.
QA: tuple[tuple[str, str], ...] = (
    ("Why is the sky blue?", "The sky looks blue because air scatters blue sunlight more than red light."),
    ("Why do leaves change colour in autumn?", "Leaves change colour because trees stop making green chlorophyll, revealing yellow and red pigments."),
    ("Why do we have seasons?", "We have seasons because Earth's axis is tilted, so each hemisphere gets more direct sunlight for part of the year."),
    ("Why does ice float on water?", "Ice floats because it is less dense than liquid water."),
    ("Why do cats purr?", "Cats purr when they are content, and sometimes to calm themselves when stressed."),
    ("Why is the ocean salty?", "The ocean is salty because rivers carry dissolved minerals from rocks into the sea."),
    ("Why do we need sleep?", "We need sleep because it lets the body repair itself and helps the brain store memories."),
    ("Why do onions make you cry?", "Onions make you cry because cutting them releases a gas that irritates the eyes."),
    ("Why does bread go stale?", "Bread goes stale because its starch slowly hardens and loses moisture."),
    ("Why do planes leave white trails?", "Planes leave white trails called contrails when hot, wet engine exhaust freezes into ice crystals."),
    ("How do vaccines work?", "Vaccines work by training the immune system to recognise a germ, so the body can fight it quickly later."),
    ("How does a rainbow form?", "A rainbow forms when raindrops bend and reflect sunlight, splitting it into colours."),
    ("How do bees make honey?", "Bees collect nectar, break it down with enzymes and fan it with their wings until it thickens into honey."),
    ("How does a thermometer work?", "A thermometer works by using a material that changes predictably with temperature, such as a liquid that expands."),
    ("How do plants drink water?", "Plants take in water through their roots and move it up the stem to the leaves."),
    ("How long should I boil an egg?", "Boil an egg for about 7 minutes for a jammy yolk or 10 minutes for a hard yolk."),
    ("How do I keep cut apples from turning brown?", "Brush cut apples with lemon juice to keep them from turning brown."),
    ("How do I make a cup of tea?", "To make a cup of tea, pour boiled water over a tea bag and steep it for three to five minutes."),
    ("How do I reverse a list in Python?", "In Python, call my_list.reverse() to reverse a list in place, or use my_list[::-1] for a reversed copy."),
    ("How do I read a file in Python?", "Use with open('file.txt') as f: text = f.read() to read the whole file."),
    ("How do I check the length of a string in Python?", "Use len to get a string's length: len('hello') returns 5."),
    ("How do I install a Python package?", "Run pip install followed by the package name, for example pip install requests."),
    ("How do I undo my last Git commit?", "Run git reset --soft HEAD~1 to undo the commit but keep your changes."),
    ("How do I comment out a line in Python?", "In Python, put a # at the start of a line to comment it out."),
    ("How do I sort a list of numbers in Python?", "Use sorted(numbers) for a new sorted list, or numbers.sort() to sort in place."),
    ("How do I convert a string to an integer in Python?", "Use int to convert a string to an integer: int('42') returns 42."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language, the language of web pages."),
    ("What does CPU stand for?", "CPU stands for central processing unit, the part of a computer that runs instructions."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius, or 212 degrees Fahrenheit, at sea level."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many continents are there?", "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa in the early 1500s."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest ocean on Earth."),
    ("What is the longest river in the world?", "The Nile and the Amazon are the longest rivers, each over 6,000 kilometres long."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain above sea level, at about 8,849 metres."),
    ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    ("What is a healthy breakfast?", "A healthy breakfast pairs protein with whole grains and fruit, such as yoghurt with oats and berries."),
    ("How can I warm up before exercise?", "To warm up before exercise, walk briskly or jog gently for five minutes."),
    ("How often should I wash my bed sheets?", "Wash your bed sheets about once a week."),
    ("Should I stretch before or after running?", "Do light movement before running and save longer stretches for afterwards."),
    ("Is it safe to look directly at the Sun?", "No, looking directly at the Sun can damage your eyes."),
    ("Can penguins fly?", "No, penguins cannot fly, but they are excellent swimmers."),
)
