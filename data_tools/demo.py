"""The bundled demo data set of the quickstart, and its hidden gold judge.

Regenerate everything (deterministic from the seed; the rankings need the demo model, ~10 min
on 2 CPU cores)::

    HF_HUB_OFFLINE=1 python -m data_tools.demo --out recipes/data/quickstart

`--no-rankings` writes only the files that need no model (seconds); `--reuse-samples` re-ranks
the completions already in `OUT/rankings_*.jsonl` (to retune the labelers without sampling).

What it writes (formats: `rlhf_stack.data`):

- sft_train / sft_eval (instructions): prompts from templates over the fact tables in
  `data_tools.demo_facts` and `data_tools.demo_tables`, with short reference answers that obey the instruction exactly.
- prompts_train / prompts_eval (prompts): PPO and evaluation prompts from the same generator.
- rankings_train / rankings_eval (rankings): K=4 completions per prompt sampled from the demo
  model (SmolLM2-135M-Instruct, chat template, temperatures 0.7-1.2, 48 new tokens), each prompt
  ranked by two simulated labelers drawn from a pool of six.
- corpus_train / corpus_eval (corpus): short encyclopedic paragraphs from the fact tables.
- STATS.md: sizes, labeler agreement, gold-vs-labeler accuracy.

Prompt groups (a task applied to one entity, e.g. "list facts about Mars", with whichever
paraphrase the seed picks) are dealt to the six splits, so no prompt, and no paraphrase of it,
is in two files.

The gold judge (`gold_score`, `gold_prefers`; design in `data_tools.demo_judge`) is the hidden
preference. The simulated labelers see it through a personal length bias and noise tuned so that
two labelers agree on ~70-80% of the pairs they both rank strictly (InstructGPT reports 72.6%):
`labeler_agreement(rows)` is that noise ceiling, which a reward model's eval accuracy is compared
against. This module builds the files that need no model; the sampling and the labelers are in
`data_tools.demo_rankings`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_tools import demo_facts as facts
from data_tools import demo_tables as tables
from data_tools.demo_judge import content_stems, gold_prefers, gold_score
from data_tools.demo_rankings import (
    LABELERS,
    LABELERS_PER_PROMPT,
    MAX_NEW_TOKENS,
    TEMPERATURES,
    TIE_EPSILON,
    K,
    Labeler,
    dense_ranks,
    gold_accuracy,
    labeler_agreement,
    labeler_scores,
    rank_with_labelers,
    sample_completions,
    sampling_run,
)
from rlhf_stack.data import write_jsonl

# The rankings half (sampling, simulated labelers) lives in data_tools.demo_rankings; its names
# are re-exported here so that `from data_tools.demo import ...` keeps working.
__all__ = ["gold_score", "gold_prefers", "labeler_agreement", "gold_accuracy", "build_text_splits", "main",
           "K", "TEMPERATURES", "MAX_NEW_TOKENS", "Labeler", "LABELERS", "LABELERS_PER_PROMPT", "TIE_EPSILON",
           "dense_ranks", "labeler_scores", "rank_with_labelers", "sample_completions", "sampling_run"]

SEED = 1234
SPLIT_SIZES: dict[str, int] = {  # prompt groups per split, in dealing order
    "rankings_eval": 60, "prompts_eval": 64, "sft_eval": 40,
    "rankings_train": 180, "prompts_train": 200, "sft_train": 360,
}
CORPUS_EVAL_FRACTION = 0.15


@dataclass(frozen=True)
class Example:
    task: str  # template family, e.g. "list_facts"
    group: str  # task + subject: every paraphrase of it lands in one split
    prompt: str
    response: str  # the reference answer (used for SFT rows only)


# ---- prompt / reference generators --------------------------------------------------------------


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _numbered(lines: list[str]) -> str:
    return "\n".join(f"{n}. {_cap(line)}" for n, line in enumerate(lines, start=1))


NUMBER = {2: "two", 3: "three", 4: "four"}
PLURAL = {"mammal": "mammals", "bird": "birds", "insect": "insects", "reptile": "reptiles", "planet": "planets",
          "programming language": "programming languages", "cooking method": "cooking methods",
          "ingredient": "cooking ingredients", "dish": "dishes"}
COMPARE_CATEGORIES = ("animals", "space", "cooking", "programming")  # where two members compare sensibly
KIND_QUESTION = {"animals": "What kind of animal is {name}?", "space": "What kind of object is {name}?"}


def _on_subject(e: facts.Entity) -> list[str]:
    """The facts that name their subject (a judge-friendly answer restates what was asked about)."""
    subject = content_stems(e.about)
    need = min(2, len(subject))
    return [f for f in e.facts if len(subject & content_stems(f)) >= need] or list(e.facts)


def entity_examples(e: facts.Entity, rng: random.Random, others: list[facts.Entity]) -> list[Example]:
    """Define, one/two sentences, list facts, one fact, summarise, yes/no, kind."""
    v, key = e.verb, e.about
    named = _on_subject(e)
    out = [
        Example("define", f"define:{key}", rng.choice([f"What {v} {e.name}?", f"Explain what {e.name} {v}.",
                f"Tell me briefly what {e.name} {v}."]), f"{e.definition} {rng.choice(e.facts)}"),
        Example("one_sentence", f"one_sentence:{key}", rng.choice([f"Describe {e.name} in one sentence.",
                f"In one sentence, what {v} {e.name}?", f"Explain {e.name} in a single sentence."]), e.definition),
        Example("two_sentences", f"two_sentences:{key}", rng.choice([f"Explain {e.name} in two sentences.",
                f"Describe {e.name} in two sentences."]), f"{e.definition} {rng.choice(e.facts)}"),
        Example("fact", f"fact:{key}", rng.choice([f"Tell me one interesting fact about {key}.",
                f"Share a fun fact about {key}."]), rng.choice(named)),
    ]
    n = rng.choice([2, 3])
    chosen = set(rng.sample(e.facts, n))
    picked = [f for f in e.facts if f in chosen]  # in table order
    items = _numbered(picked)
    subject = content_stems(key)
    if len(subject & content_stems(" ".join(picked))) < min(2, len(subject)):
        items = f"{_cap(key)}:\n{items}"  # name the subject once when the items do not
    out.append(Example("list_facts", f"list_facts:{key}", rng.choice([f"List {NUMBER[n]} facts about {key}.",
                       f"Give me {NUMBER[n]} facts about {key}.", f"What are {NUMBER[n]} interesting facts about {key}?"]),
                       items))
    paragraph = " ".join([e.definition, *rng.sample(e.facts, 3)])
    out.append(Example("summarize", f"summarize:{key}", f"Summarize this paragraph in one sentence: {paragraph}",
                       e.definition))
    if e.kind:
        wrong = sorted({o.kind for o in others if o.category == e.category and o.kind and o.kind != e.kind})
        if wrong:
            w = rng.choice(wrong)
            ask = rng.choice(["Answer yes or no.", "Answer yes or no, then explain briefly."])
            why = f" {rng.choice(named)}" if "explain" in ask else ""
            out.append(Example("yes_no", f"yes:{key}", f"Is {e.name} {_a(e.kind)}? {ask}",
                               f"Yes. {_cap(e.name)} is {_a(e.kind)}.{why}"))
            out.append(Example("yes_no", f"no:{key}", f"Is {e.name} {_a(w)}? {ask}",
                               f"No. {_cap(e.name)} is {_a(e.kind)}, not {_a(w)}."))
        if e.category in KIND_QUESTION:
            out.append(Example("kind", f"kind:{key}", KIND_QUESTION[e.category].format(name=e.name),
                               f"{_cap(e.name)} is {_a(e.kind)}. {rng.choice(e.facts)}"))
    return out


def compare_examples(rng: random.Random) -> list[Example]:
    out = []
    for category in COMPARE_CATEGORIES:
        members = [e for e in facts.ENTITIES if e.category == category]
        for first, second in zip(members[0::2], members[1::2], strict=False):
            prompt = rng.choice([f"What is the difference between {first.name} and {second.name}?",
                                 f"How is {first.name} different from {second.name}?"])
            out.append(Example("compare", f"compare:{first.about}:{second.about}", prompt,
                               f"{first.definition} {second.definition}"))
    return out


def list_examples(rng: random.Random) -> list[Example]:
    """'Name three mammals.', 'List two countries in Asia.', 'List three tips for ...'."""
    out = []
    for kind, plural in PLURAL.items():
        members = [e for e in facts.ENTITIES if e.kind == kind]
        for n in [n for n in (2, 3, 4) if n <= len(members)]:
            verb = rng.choice(["Name", "List"])
            shown = [f"{m.short}." for m in rng.sample(members, n)]
            out.append(Example("list_kind", f"list_kind:{kind}:{n}", f"{verb} {NUMBER[n]} {plural}.",
                               f"{_cap(plural)} include:\n{_numbered(shown)}"))
    for continent in sorted({c.continent for c in tables.COUNTRIES}):
        members = [c for c in tables.COUNTRIES if c.continent == continent]
        for n in [n for n in (2, 3) if n <= len(members)]:
            shown = [f"{c.name}, whose capital is {c.capital}." for c in rng.sample(members, n)]
            out.append(Example("list_countries", f"list_countries:{continent}:{n}",
                               f"Name {NUMBER[n]} countries in {continent}.",
                               f"Countries in {continent} include:\n{_numbered(shown)}"))
    return out


def country_examples(c: tables.Country, rng: random.Random) -> list[Example]:
    return [
        Example("capital", f"capital:{c.name}", rng.choice([f"What is the capital of {c.name}?",
                f"Which city is the capital of {c.name}?"]), f"The capital of {c.name} is {c.capital}."),
        Example("continent", f"continent:{c.name}", rng.choice([f"Which continent is {c.name} in?",
                f"On which continent is {c.name}?"]), f"{c.name} is on the continent of {c.continent}."),
        Example("country", f"country:{c.name}", f"Tell me about {c.name} in two sentences.",
                f"{c.name} is a country in {c.continent} whose capital is {c.capital}. {c.fact}"),
    ]


def goal_examples(g: tables.Goal, rng: random.Random) -> list[Example]:
    n = rng.choice([2, 3])
    tip, second = rng.sample(g.tips, 2)
    return [
        Example("tip", f"tip:{g.gerund}", rng.choice([f"Give me one tip for {g.gerund}.",
                f"What is one good tip for {g.gerund}?"]), f"To {g.verb}, {tip[0].lower()}{tip[1:]}"),
        Example("list_tips", f"list_tips:{g.gerund}", rng.choice([f"List {NUMBER[n]} tips for {g.gerund}.",
                f"Give me {NUMBER[n]} tips for {g.gerund}."]), f"To {g.verb}:\n{_numbered(rng.sample(g.tips, n))}"),
        Example("how_to", f"how_to:{g.gerund}", f"How can I {g.verb}? Answer in two sentences.",
                f"To {g.verb}, {tip[0].lower()}{tip[1:]} {second}"),
    ]


def build_pool(seed: int) -> list[Example]:
    """Every candidate example, one per prompt group, in a fixed order."""
    rng = random.Random(seed)
    pool: list[Example] = []
    for e in facts.ENTITIES:
        pool += entity_examples(e, rng, list(facts.ENTITIES))
    pool += compare_examples(rng) + list_examples(rng)
    for c in tables.COUNTRIES:
        pool += country_examples(c, rng)
    for g in tables.GOALS:
        pool += goal_examples(g, rng)
    for n, (style, original, rewritten) in enumerate(tables.REWRITES):
        instruction = rng.choice(tables.REWRITE_INSTRUCTIONS[style])
        pool.append(Example("rewrite", f"rewrite:{n}", f'{instruction}"{original}"', rewritten))
    pool += [Example("qa", f"qa:{n}", q, a) for n, (q, a) in enumerate(tables.QA)]
    groups = Counter(x.group for x in pool)
    prompts = Counter(x.prompt for x in pool)
    assert max(groups.values()) == 1 and max(prompts.values()) == 1, "prompt groups must be unique"
    return pool


def deal(pool: list[Example], sizes: dict[str, int], seed: int) -> dict[str, list[Example]]:
    """Stratified deal: each task's groups spread evenly through one order, then cut into splits."""
    rng = random.Random(seed + 1)
    by_task: dict[str, list[Example]] = {}
    for x in pool:
        by_task.setdefault(x.task, []).append(x)
    keyed = []
    for task in sorted(by_task):
        members = by_task[task]
        rng.shuffle(members)
        keyed += [((i + rng.random()) / len(members), x.group, x) for i, x in enumerate(members)]
    order = [x for _, _, x in sorted(keyed, key=lambda t: (t[0], t[1]))]
    if sum(sizes.values()) > len(order):
        raise ValueError(f"asked for {sum(sizes.values())} prompt groups, the generator has {len(order)}")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = order[start:start + size]
        start += size
    return out


# ---- corpus -------------------------------------------------------------------------------------


def corpus_paragraphs(seed: int) -> list[tuple[str, str]]:
    """(subject, paragraph) pairs; the subject decides the train/eval side."""
    rng = random.Random(seed + 2)
    out = []
    for e in facts.ENTITIES:
        out.append((e.about, " ".join([e.definition, *e.facts])))
        shuffled = rng.sample(e.facts, len(e.facts))
        out.append((e.about, " ".join([shuffled[0], e.definition, *shuffled[1:3]])))
    for c in tables.COUNTRIES:
        out.append((c.name, f"{c.name} is a country in {c.continent}. Its capital is {c.capital}. {c.fact}"))
    for continent in sorted({c.continent for c in tables.COUNTRIES}):
        members = [c for c in tables.COUNTRIES if c.continent == continent]
        names = ", ".join(c.name for c in members[:-1]) + f" and {members[-1].name}"
        capitals = " ".join(f"The capital of {c.name} is {c.capital}." for c in members[:3])
        out.append((continent, f"Countries in {continent} include {names}. {capitals}"))
    for g in tables.GOALS:
        out.append((g.gerund, f"There are simple ways to {g.verb}. " + " ".join(g.tips)))
    for q, a in tables.QA:
        out.append((q, f"{q} {a}"))
    for category in sorted({e.category for e in facts.ENTITIES}):
        members = [e for e in facts.ENTITIES if e.category == category]
        for start in range(0, len(members), 4):
            chunk = members[start:start + 4]
            out.append((f"{category}:{start}", " ".join(m.definition for m in chunk)))
    return out


def split_corpus(seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed + 3)
    subjects = sorted({s for s, _ in corpus_paragraphs(seed)})
    held = set(rng.sample(subjects, round(CORPUS_EVAL_FRACTION * len(subjects))))
    train, held_rows = [], []
    for subject, text in corpus_paragraphs(seed):
        (held_rows if subject in held else train).append({"text": text})
    rng.shuffle(train)
    return train, held_rows


def build_text_splits(seed: int = SEED) -> dict[str, list[dict]]:
    """Every output file that needs no model: name -> rows (deterministic in `seed`)."""
    splits = deal(build_pool(seed), SPLIT_SIZES, seed)
    corpus_train, corpus_eval = split_corpus(seed)
    return {
        "sft_train": [{"prompt": x.prompt, "response": x.response} for x in splits["sft_train"]],
        "sft_eval": [{"prompt": x.prompt, "response": x.response} for x in splits["sft_eval"]],
        "prompts_train": [{"prompt": x.prompt} for x in splits["prompts_train"]],
        "prompts_eval": [{"prompt": x.prompt} for x in splits["prompts_eval"]],
        "corpus_train": corpus_train,
        "corpus_eval": corpus_eval,
        "rankings_train_prompts": [{"prompt": x.prompt} for x in splits["rankings_train"]],
        "rankings_eval_prompts": [{"prompt": x.prompt} for x in splits["rankings_eval"]],
    }


# ---- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="recipes/data/quickstart", help="output directory")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-rankings", action="store_true", help="skip the files that need the demo model")
    parser.add_argument("--reuse-samples", action="store_true", help="re-rank the completions already in OUT")
    parser.add_argument("--model", default=None, help="model dir (default: the provisioned demo model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for sampling (1 is faster on a machine shared with other jobs)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    splits = build_text_splits(args.seed)
    for name in ("sft_train", "sft_eval", "prompts_train", "prompts_eval", "corpus_train", "corpus_eval"):
        write_jsonl(splits[name], out / f"{name}.jsonl")
    if args.no_rankings:
        return 0
    from data_tools.demo_stats import write_stats

    rankings, wall_s = sampling_run(splits, out, args)
    for split, rows in rankings.items():
        write_jsonl(rows, out / f"{split}.jsonl")
    print(write_stats(out, splits, rankings, wall_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
