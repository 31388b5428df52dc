"""`label generate` on the tiny model: K distinct samples per prompt, settings recorded, resumable."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from data_tools.labeler.candidates import item_id_for, load_candidates
from data_tools.labeler.cli import app as cli_app
from data_tools.labeler.generate import SamplingSettings, completed_ids, generate_candidates
from rlhf_stack.errors import DataError, RlhfStackError

PROMPTS = ["Name a fruit.", "Say hello.", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]]
SETTINGS = SamplingSettings(k=3, max_new_tokens=6, batch_size=2, seed=1)


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_generate_then_resume_after_a_crash(tmp_path, tiny_model_dir):
    out = tmp_path / "candidates.jsonl"
    first = generate_candidates(str(tiny_model_dir), write_prompts(tmp_path / "p1.jsonl", PROMPTS[:2] + PROMPTS[:1]),
                                out, SETTINGS, progress=False)
    assert first == {"prompts": 2, "already_done": 0, "written": 2, "short": 0, "failed": 0}  # duplicate prompt once
    with out.open("a") as fh:
        fh.write('{"id": "torn-by-a-cra')  # the writer died mid-line
    second = generate_candidates(str(tiny_model_dir), write_prompts(tmp_path / "p2.jsonl", PROMPTS), out, SETTINGS,
                                 progress=False)
    assert second["already_done"] == 2 and second["written"] == 1
    items = load_candidates(out)  # the torn line is gone; every item is valid for `serve`
    assert [c.id for c in items] == [item_id_for(p) for p in PROMPTS]
    assert items[2].prompt == PROMPTS[2]
    for item in items:
        assert len(item.completions) == 3 and len(set(item.completions)) == 3
        assert item.model == str(tiny_model_dir)
        assert item.sampling["temperature"] == 1.0 and item.sampling["max_new_tokens"] == 6
        assert item.sampling["do_sample"] is True and item.sampling["seed"] in (1, 2)
    third = generate_candidates(str(tiny_model_dir), tmp_path / "p2.jsonl", out, SETTINGS, progress=False)
    assert third["written"] == 0 and third["already_done"] == 3  # nothing to do, model not even loaded


def test_same_seed_same_samples(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    runs = []
    for name in ("a.jsonl", "b.jsonl"):
        generate_candidates(str(tiny_model_dir), prompts, tmp_path / name, SETTINGS, progress=False)
        runs.append(load_candidates(tmp_path / name)[0].completions)
    assert runs[0] == runs[1]


def test_cli_generate(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    result = CliRunner().invoke(cli_app, ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                                          "-k", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 0, result.output
    assert "2 items written" in result.output
    assert [len(c.completions) for c in load_candidates(tmp_path / "c.jsonl")] == [2, 2]


@pytest.mark.parametrize("settings", [SamplingSettings(k=1), SamplingSettings(k=10), SamplingSettings(temperature=0)])
def test_bad_settings(settings, tmp_path):
    with pytest.raises(RlhfStackError):
        generate_candidates("unused", tmp_path / "none.jsonl", tmp_path / "out.jsonl", settings)


def test_corrupt_output_is_reported_not_overwritten(tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(DataError, match=rf"{out}:2: "):
        completed_ids(out)
    assert out.read_text().count("\n") == 3
