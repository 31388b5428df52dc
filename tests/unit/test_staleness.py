"""The runner's staleness rule sees every data field by its type (`config.DataPath`), not by a list."""

from __future__ import annotations

from rlhf_stack.config import Config, DataConfig, DataPath
from rlhf_stack.data import fingerprint
from rlhf_stack.evaluation.evaluate import EvalConfig
from rlhf_stack.pipeline.staleness import config_hash, data_files
from rlhf_stack.reward.stage import RewardConfig


class _Source(Config):
    glossary: DataPath  # a data field no list anywhere names
    weight: float = 1.0
    note: str = "not a file"


class _NewStageConfig(Config):
    examples: DataPath
    extra_examples: DataPath | None = None
    sources: list[_Source] = []
    data: DataConfig | None = None
    model_name: str = "not data"


def test_a_new_data_field_takes_part_in_the_staleness_check(tmp_path):
    glossary = tmp_path / "glossary.jsonl"
    glossary.write_text('{"text": "one"}\n')
    cfg = _NewStageConfig(examples="a.jsonl", extra_examples="b.jsonl", sources=[_Source(glossary=str(glossary))],
                          data=DataConfig(path="c.jsonl", eval_path="d.jsonl"))
    assert data_files(cfg) == ["a.jsonl", "b.jsonl", str(glossary), "c.jsonl", "d.jsonl"]
    assert data_files(_NewStageConfig(examples="a.jsonl")) == ["a.jsonl"]  # None is no file

    def key() -> str:  # what the runner computes (pipeline.runner._Run.prepare)
        return config_hash("new", cfg.model_dump(mode="json"), {p: fingerprint(p) for p in data_files(cfg)}, {})

    before = key()
    glossary.write_text('{"text": "two"}\n')  # edit the file only: the config is unchanged
    assert key() != before


def test_the_stage_configs_declare_their_data_fields():
    eval_cfg = EvalConfig(policy="p", prompts="prompts.jsonl", corpus="corpus.jsonl", rankings="rankings.jsonl")
    assert data_files(eval_cfg) == ["prompts.jsonl", "corpus.jsonl", "rankings.jsonl"]
    reward_cfg = RewardConfig(model={"name_or_path": "m"}, data={"path": "r.jsonl"}, normalize_with="sft.jsonl")
    assert data_files(reward_cfg) == ["r.jsonl", "sft.jsonl"]


def test_the_stage_registry_and_the_recipe_agree():
    from rlhf_stack.config import _config_class
    from rlhf_stack.pipeline.runner import Recipe
    from rlhf_stack.pipeline.stages import STAGES

    stage_fields = {name for name, info in Recipe.model_fields.items() if _config_class(info.annotation)}
    assert {spec.field for spec in STAGES.values()} == stage_fields
    for spec in STAGES.values():
        assert callable(spec.entry())
        assert _config_class(Recipe.model_fields[spec.field].annotation) is spec.config_type()
