"""The bundled demo data set of the quickstart, and its hidden gold judge.

Regenerate everything (deterministic from the seed; the rankings need the demo model, ~10 min
on 2 CPU cores)::

    HF_HUB_OFFLINE=1 python -m data_tools.demo --out recipes/data/quickstart

`--no-rankings` writes only the files that need no model (seconds); `--reuse-samples` re-ranks
the completions already in `OUT/rankings_*.jsonl` (to retune the labelers without sampling).

What it writes (formats: `rlhf_stack.data`):

- sft_train / sft_eval (instructions): prompts from templates over the fact tables in
  `data_tools.demo_facts`, with short reference answers that obey the instruction exactly.
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
preference. A simulated labeler scores a completion as gold + a personal length bias +
Gaussian noise of a personal scale, and ranks the K completions densely (scores within
`TIE_EPSILON` tie). The noise is tuned so that two labelers agree on ~70-80% of the pairs they both
rank strictly (InstructGPT reports 72.6% inter-labeler agreement): `labeler_agreement(rows)` is
that noise ceiling, which a reward model's eval accuracy is compared against.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_tools import demo_facts as facts
from data_tools.demo_judge import content_stems, gold_prefers, gold_score
from rlhf_stack.data import prompt_key, write_jsonl

__all__ = ["gold_score", "gold_prefers", "labeler_agreement", "gold_accuracy", "build_text_splits", "main"]

SEED = 1234
SPLIT_SIZES: dict[str, int] = {  # prompt groups per split, in dealing order
    "rankings_eval": 60, "prompts_eval": 64, "sft_eval": 40,
    "rankings_train": 180, "prompts_train": 200, "sft_train": 360,
}
K = 4
TEMPERATURES = (0.7, 0.9, 1.05, 1.2)  # one per completion slot: varied quality within a prompt
MAX_NEW_TOKENS = 48
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
    for continent in sorted({c.continent for c in facts.COUNTRIES}):
        members = [c for c in facts.COUNTRIES if c.continent == continent]
        for n in [n for n in (2, 3) if n <= len(members)]:
            shown = [f"{c.name}, whose capital is {c.capital}." for c in rng.sample(members, n)]
            out.append(Example("list_countries", f"list_countries:{continent}:{n}",
                               f"Name {NUMBER[n]} countries in {continent}.",
                               f"Countries in {continent} include:\n{_numbered(shown)}"))
    return out


def country_examples(c: facts.Country, rng: random.Random) -> list[Example]:
    return [
        Example("capital", f"capital:{c.name}", rng.choice([f"What is the capital of {c.name}?",
                f"Which city is the capital of {c.name}?"]), f"The capital of {c.name} is {c.capital}."),
        Example("continent", f"continent:{c.name}", rng.choice([f"Which continent is {c.name} in?",
                f"On which continent is {c.name}?"]), f"{c.name} is on the continent of {c.continent}."),
        Example("country", f"country:{c.name}", f"Tell me about {c.name} in two sentences.",
                f"{c.name} is a country in {c.continent} whose capital is {c.capital}. {c.fact}"),
    ]


def goal_examples(g: facts.Goal, rng: random.Random) -> list[Example]:
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
    for c in facts.COUNTRIES:
        pool += country_examples(c, rng)
    for g in facts.GOALS:
        pool += goal_examples(g, rng)
    for n, (style, original, rewritten) in enumerate(facts.REWRITES):
        instruction = rng.choice(facts.REWRITE_INSTRUCTIONS[style])
        pool.append(Example("rewrite", f"rewrite:{n}", f'{instruction}"{original}"', rewritten))
    pool += [Example("qa", f"qa:{n}", q, a) for n, (q, a) in enumerate(facts.QA)]
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
    for c in facts.COUNTRIES:
        out.append((c.name, f"{c.name} is a country in {c.continent}. Its capital is {c.capital}. {c.fact}"))
    for continent in sorted({c.continent for c in facts.COUNTRIES}):
        members = [c for c in facts.COUNTRIES if c.continent == continent]
        names = ", ".join(c.name for c in members[:-1]) + f" and {members[-1].name}"
        capitals = " ".join(f"The capital of {c.name} is {c.capital}." for c in members[:3])
        out.append((continent, f"Countries in {continent} include {names}. {capitals}"))
    for g in facts.GOALS:
        out.append((g.gerund, f"There are simple ways to {g.verb}. " + " ".join(g.tips)))
    for q, a in facts.QA:
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


# ---- simulated labelers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Labeler:
    name: str
    noise: float  # std of the Gaussian noise added to the gold score
    length_bias: float  # added per 30 words of a completion (>0 likes long answers)


# Noise scales tuned on the sampled completions so that two labelers agree on ~74% of the pairs
# both rank strictly (x0.5: 78%, x1.0: 68%; InstructGPT's labelers: 72.6%).
LABELERS: tuple[Labeler, ...] = (
    Labeler("labeler-1", 0.3, 0.0),
    Labeler("labeler-2", 0.4, 0.05),
    Labeler("labeler-3", 0.4, -0.05),
    Labeler("labeler-4", 0.5, 0.0),
    Labeler("labeler-5", 0.55, 0.1),
    Labeler("labeler-6", 0.65, -0.1),
)
LABELERS_PER_PROMPT = 2
TIE_EPSILON = 0.03  # noisy scores closer than this share a rank


def dense_ranks(scores: list[float], epsilon: float = TIE_EPSILON) -> list[int]:
    """Dense ranks, 1 = highest score; a score within `epsilon` of the one above ties with it."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    rank = 1
    for pos, i in enumerate(order):
        if pos and scores[order[pos - 1]] - scores[i] >= epsilon:
            rank += 1
        ranks[i] = rank
    return ranks


def labeler_scores(labeler: Labeler, prompt: str, completions: list[str], rng: random.Random) -> list[float]:
    return [gold_score(prompt, c) + labeler.length_bias * len(c.split()) / 30 + rng.gauss(0.0, labeler.noise)
            for c in completions]


def rank_with_labelers(split: str, prompts: list[str], completions: list[list[str]], seed: int) -> list[dict]:
    """Two rankings rows (two labelers) per prompt; deterministic in (seed, split, position)."""
    rows = []
    for n, (prompt, group) in enumerate(zip(prompts, completions, strict=True)):
        pick = random.Random(f"{seed}:{split}:{n}:labelers")
        for labeler in pick.sample(LABELERS, LABELERS_PER_PROMPT):
            rng = random.Random(f"{seed}:{split}:{n}:{labeler.name}")
            rows.append({"prompt": prompt, "completions": group,
                         "ranks": dense_ranks(labeler_scores(labeler, prompt, group, rng)),
                         "annotator": labeler.name, "id": f"{split}-{n:04d}/{labeler.name}"})
    return rows


def _field(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def labeler_agreement(rankings_rows) -> float:
    """Share of completion pairs, ranked strictly by two annotators of one prompt, they order alike.

    Rows are dicts or `rlhf_stack.data.Ranking`s; rows of the same prompt and completions are
    compared pairwise; pairs either annotator tied are left out (InstructGPT's 72.6% is this).
    """
    groups: dict[str, list] = {}
    for row in rankings_rows:
        key = json.dumps([prompt_key(_field(row, "prompt")), sorted(_field(row, "completions"))])
        groups.setdefault(key, []).append(row)
    agree = total = 0
    for rows in groups.values():
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                ranks_a = dict(zip(_field(rows[a], "completions"), _field(rows[a], "ranks"), strict=True))
                ranks_b = dict(zip(_field(rows[b], "completions"), _field(rows[b], "ranks"), strict=True))
                texts = sorted(ranks_a)
                for i in range(len(texts)):
                    for j in range(i + 1, len(texts)):
                        da = ranks_a[texts[i]] - ranks_a[texts[j]]
                        db = ranks_b[texts[i]] - ranks_b[texts[j]]
                        if da and db:
                            total += 1
                            agree += (da > 0) == (db > 0)
    return agree / total if total else float("nan")


def gold_accuracy(rankings_rows) -> float:
    """Share of strictly ranked pairs on which the gold judge sides with the annotator (ties 0.5)."""
    hits = total = 0.0
    for row in rankings_rows:
        prompt, completions, ranks = _field(row, "prompt"), _field(row, "completions"), _field(row, "ranks")
        text_prompt = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        for i in range(len(ranks)):
            for j in range(len(ranks)):
                if ranks[i] < ranks[j]:
                    total += 1
                    hits += gold_prefers(text_prompt, completions[i], completions[j])
    return hits / total if total else float("nan")


# ---- sampling from the demo model ---------------------------------------------------------------


def sample_completions(prompts: list[str], model_dir: str, seed: int, batch_size: int = 32) -> list[list[str]]:
    """K completions per prompt, slot k at TEMPERATURES[k]; duplicates and blanks are resampled."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: list[list[str | None]] = [[None] * K for _ in prompts]
    for attempt in range(6):
        batches = []
        for k in range(K):  # one temperature per batch; similar lengths together (less padding)
            todo = sorted((p for p in range(len(prompts)) if _needs_sample(out[p], k)), key=lambda p: len(prompts[p]))
            batches += [(k, todo[i:i + batch_size]) for i in range(0, len(todo), batch_size)]
        for n, (k, batch) in enumerate(batches):
            temperature = TEMPERATURES[k] if attempt == 0 else 1.2 + 0.1 * attempt
            torch.manual_seed(seed * 1000 + attempt * 100 + n)
            for p, text in zip(batch, _generate(model, tokenizer, [prompts[p] for p in batch], temperature), strict=True):
                out[p][k] = text
            print(f"  attempt {attempt}: batch {n + 1}/{len(batches)}", file=sys.stderr, flush=True)
        if not batches:
            break
    return [[c or "" for c in group] for group in out]


def _needs_sample(group: list[str | None], k: int) -> bool:
    text = group[k]
    return not text or not text.strip() or text in group[:k]


def _generate(model, tokenizer, prompts: list[str], temperature: float) -> list[str]:
    import torch

    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, do_sample=True, temperature=temperature, top_p=0.95, top_k=0,
                             max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


# ---- command line -------------------------------------------------------------------------------


def sampling_run(splits: dict[str, list[dict]], out: Path, args) -> tuple[dict[str, list[dict]], float | None]:
    """Rankings rows per split: sample K completions per prompt (or reuse OUT's), then label them."""
    names = ("rankings_train", "rankings_eval")
    prompts = {name: [row["prompt"] for row in splits[f"{name}_prompts"]] for name in names}
    wall_s = None
    if args.reuse_samples:
        completions = {name: _reused(out / f"{name}.jsonl", prompts[name]) for name in names}
    else:
        from rlhf_stack.provision import provision_demo_model

        model_dir = args.model or str(provision_demo_model())
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        everything = prompts["rankings_train"] + prompts["rankings_eval"]
        start = time.perf_counter()
        sampled = sample_completions(everything, model_dir, args.seed)
        wall_s = time.perf_counter() - start
        n_train = len(prompts["rankings_train"])
        completions = {"rankings_train": sampled[:n_train], "rankings_eval": sampled[n_train:]}
    return {name: rank_with_labelers(name.split("_")[1], prompts[name], completions[name], args.seed)
            for name in names}, wall_s


def _reused(path: Path, prompts: list[str]) -> list[list[str]]:
    from rlhf_stack.data import load_rows
    from rlhf_stack.errors import DataError

    found = {row["prompt"]: row["completions"] for row in load_rows(path, "rankings")}
    missing = [p for p in prompts if p not in found]
    if missing:
        raise DataError(f"{path}: no completions for {len(missing)} prompts (e.g. {missing[0]!r}); sample anew")
    return [found[p] for p in prompts]



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
