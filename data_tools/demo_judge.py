"""The hidden gold judge of the demo data set: a fixed function of (prompt, response) text.

It stands in for the human preference that InstructGPT's labelers approximate. The simulated
labelers (`data_tools.demo`) see it through noise; the quickstart's reward model learns it from
their rankings; the quickstart's evaluation uses it as the judge of win rates. Because it reads
only the text, a reward model CAN learn it, and because most of its weight is on things a policy
controls directly (stop early and cleanly, do not repeat, answer the question asked), a few PPO
steps CAN move it.

`gold_score(prompt, response)` is the weighted sum (weights in `GOLD_WEIGHTS`) of:

- on_topic (0..1): share of the prompt's content words (stemmed; stop words and instruction words
  like "list", "explain" removed) that the response uses, needing at most 2 of them (1 for
  rewrites; always 1.0 for simplify/shorten/positive rewrites, whose point is to change words).
  For rewrite and summarise prompts the content words come from the text after the colon.
- follows (0..1): the instruction detected in the prompt is obeyed:
  "List/Name/Give (me) N ..." -> exactly N list items (`1.`/`-` lines), minus 0.5 per item off;
  "in one sentence" / "in two sentences" -> that many sentences, minus 0.5 per sentence off;
  "yes or no" -> the answer starts with Yes or No;
  rewrite prompts -> changed, not a list, at most 2x the original's words + 5. Otherwise 1.
- clean_end (0 or 1): ends with terminal punctuation, i.e. was not cut off mid-sentence.
- length (>= 0, capped at 2): (words - target) / target above a target length set by the
  instruction (22 words a requested sentence, 10 a list item + 6, 25 for yes/no, 30 otherwise).
- repetition (0..1): share of repeated word 4-grams.
- refusal (0 or 1): "I'm sorry", "as an AI", "I cannot", ... (the demo prompts are all harmless).
- markup (0 or 1): markdown bold or headings (the demo's style is plain text).
- too_short (0 or 1): fewer than 3 words.

`gold_prefers(prompt, a, b)` is 1.0 / 0.0 / 0.5 (a better / b better / equal scores).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

GOLD_WEIGHTS: dict[str, float] = {
    "on_topic": 1.0,
    "follows": 1.5,
    "clean_end": 1.0,
    "length": -0.75,
    "repetition": -2.0,
    "refusal": -1.0,
    "markup": -0.25,
    "too_short": -0.5,
}
TIE_TOLERANCE = 1e-9  # gold_prefers calls scores closer than this a tie

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
STOPWORDS = frozenset(
    "a an the and or but if then so of to in on at by for with from into about as is are was were be been "
    "being it its this that these those there their they them he she his her we our you your i me my do "
    "does did doing can could would should will shall may might must have has had not no yes than too very "
    "what which who whom whose why how when where some any each every all both more most such own same "
    "just also only up out over under again further once here other one two three four five six many much".split()
)
INSTRUCTION_WORDS = frozenset(
    "list name give tell explain describe write rewrite make sentence sentences briefly answer please short "
    "simple single words summarize summarise paragraph following fact facts interesting fun tip tips good "
    "example examples thing things ways kind type share single correct fix grammar tone polite formal animal object "
    "positive concise shorter simplify then difference different between".split()
)
# "Give me one tip" asks for a sentence, not a one-item list: counts start at two.
LIST_RE = re.compile(r"\b(?:list|name|give me|give|what are|suggest)\s+(two|three|four|five|six|[2-9])\b")
SENTENCES_RE = re.compile(r"\b(?:in|as|using) (?:a single|one|two|three) sentences?\b")
YES_NO_RE = re.compile(r"\byes or no\b")
REWRITE_RE = re.compile(r"^\s*(?:rewrite|make this|fix the grammar|correct the grammar|simplify|give this sentence)\b")
SUMMARY_RE = re.compile(r"^\s*summari[sz]e\b")
ITEM_RE = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+\S", re.MULTILINE)
WORD_RE = re.compile(r"[A-Za-z0-9']+")
SENTENCE_END_RE = re.compile(r"[.!?][\"')\]]*$")
REFUSAL_RE = re.compile(
    r"\b(?:i'm sorry|i am sorry|as an ai|i cannot|i can't|i'm not able|i am not able|i'm unable|i am unable|"
    r"i don't have (?:access|the ability)|chatbot|language model)\b"
)
MARKUP_RE = re.compile(r"\*\*|^\s*#+\s", re.MULTILINE)


@dataclass(frozen=True)
class Instruction:
    """What the prompt asks for, as far as the judge checks it."""

    kind: str  # "list" | "sentences" | "yes_no" | "rewrite" | "free"
    count: int = 0  # list items or sentences requested
    source: str = ""  # the text to rewrite or summarise (after the colon)
    simplify: bool = False  # a rewrite whose point is to change the words


@dataclass(frozen=True)
class GoldFeatures:
    on_topic: float
    follows: float
    clean_end: float
    length: float
    repetition: float
    refusal: float
    markup: float
    too_short: float


def parse_instruction(prompt: str) -> Instruction:
    text = prompt.strip().lower()
    after_colon = prompt.split(":", 1)[1].strip().strip('"') if ":" in prompt else ""
    if REWRITE_RE.search(text) and after_colon:
        simplify = bool(re.search(r"simpl|positive|shorter|concise", text.split(":", 1)[0]))
        return Instruction("rewrite", source=after_colon, simplify=simplify)
    if m := LIST_RE.search(text):
        return Instruction("list", count=NUMBER_WORDS.get(m.group(1)) or int(m.group(1)))
    if m := SENTENCES_RE.search(text):
        word = m.group(0).split()[-2]
        return Instruction("sentences", count=NUMBER_WORDS.get(word, 1), source=after_colon if SUMMARY_RE.search(text) else "")
    if YES_NO_RE.search(text):
        return Instruction("yes_no")
    return Instruction("free", source=after_colon if SUMMARY_RE.search(text) else "")


# ---- text measurements --------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def stem(word: str) -> str:
    """Crude suffix stripping, then the first 6 letters: "sleeping"/"sleep", "volcanoes"/"volcanic"."""
    w = word.lower().removesuffix("'s")
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "aeiouls":
            w = w[:-1]  # running -> run
    elif w.endswith("es") and len(w) > 4 and w[-3] in "sxz":
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        w = w[:-1]
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]  # save/saving -> sav
    return w[:6]


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if len(w) > 2 and w.lower() not in STOPWORDS
            and w.lower() not in INSTRUCTION_WORDS and not w.isdigit()}


def count_items(response: str) -> int:
    return len(ITEM_RE.findall(response))


def count_sentences(response: str) -> int:
    body = ITEM_RE.sub(" x", response).strip()
    pieces = [p for p in re.split(r"(?<=[.!?])[\"')\]]*\s+", body) if WORD_RE.search(p)]
    return len(pieces)


def repetition(response: str) -> float:
    """Share of repeated word 4-grams (4, not 3: "whose capital is" may recur in a good list)."""
    tokens = [w.lower() for w in words(response)]
    grams = [tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


# ---- the features and the score -----------------------------------------------------------------


def _on_topic(prompt: str, response: str, ins: Instruction) -> float:
    wanted = content_stems(ins.source or prompt)
    if not wanted or ins.simplify:  # no subject words, or changing the words is the point
        return 1.0
    need = min(1 if ins.kind == "rewrite" else 2, len(wanted))
    return min(1.0, len(wanted & content_stems(response)) / need)


def _follows(response: str, ins: Instruction) -> float:
    if ins.kind == "list":
        items = count_items(response)
        return 0.0 if items == 0 else max(0.0, 1.0 - 0.5 * abs(items - ins.count))
    if ins.kind == "sentences":
        return max(0.0, 1.0 - 0.5 * abs(count_sentences(response) - ins.count))
    if ins.kind == "yes_no":
        first = words(response)[:1]
        return 1.0 if first and first[0].lower() in ("yes", "no") else 0.0
    if ins.kind == "rewrite":
        changed = " ".join(words(response)).lower() != " ".join(words(ins.source)).lower()
        short = len(words(response)) <= 2 * len(words(ins.source)) + 5
        return 1.0 if changed and short and count_items(response) == 0 else 0.0
    return 1.0


def _target_words(ins: Instruction) -> int:
    if ins.kind == "list":
        return 10 * ins.count + 6
    if ins.kind == "sentences":
        return 22 * ins.count
    if ins.kind == "yes_no":
        return 25
    if ins.kind == "rewrite":
        return int(1.5 * len(words(ins.source))) + 8
    return 30


def gold_features(prompt: str, response: str) -> GoldFeatures:
    ins = parse_instruction(prompt)
    text = response.strip()
    n_words = len(words(text))
    target = _target_words(ins)
    return GoldFeatures(
        on_topic=_on_topic(prompt, text, ins),
        follows=_follows(text, ins),
        clean_end=1.0 if SENTENCE_END_RE.search(text) else 0.0,
        length=min(2.0, max(0.0, (n_words - target) / target)),
        repetition=repetition(text),
        refusal=1.0 if REFUSAL_RE.search(text.lower()) else 0.0,
        markup=1.0 if MARKUP_RE.search(text) else 0.0,
        too_short=1.0 if n_words < 3 else 0.0,
    )


def gold_score(prompt: str, response: str) -> float:
    """The gold judge's score of `response` to `prompt` (higher is better; max 3.5)."""
    features = asdict(gold_features(prompt, response))
    return sum(GOLD_WEIGHTS[name] * value for name, value in features.items())


def gold_prefers(prompt: str, a: str, b: str) -> float:
    """1.0 if the gold judge prefers `a`, 0.0 if it prefers `b`, 0.5 for equal scores."""
    diff = gold_score(prompt, a) - gold_score(prompt, b)
    if abs(diff) <= TIE_TOLERANCE:
        return 0.5
    return 1.0 if diff > 0 else 0.0


def gold_judge(prompts: list, responses: list[str]) -> list[float]:
    """The gold judge as a batch scorer for `rlhf_stack`'s judge registry (entry point `gold`):
    prompts as text or chat messages, one score per response."""
    from rlhf_stack.data import prompt_key

    return [gold_score(prompt_key(p), r) for p, r in zip(prompts, responses, strict=True)]
