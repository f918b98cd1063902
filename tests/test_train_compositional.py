"""The compositional set inside training (``eval.compositional``): report.md's rows beside chance, and the
metrics.jsonl record equal to ``python -m eval compositional`` on the final model."""

from __future__ import annotations

import json

import pytest
import torch

import mmcontrast as mc
from data_prep.compositional import write_compositional
from eval.__main__ import main as eval_main
from mmcontrast.errors import UserError
from training.config import EvalConfig, load_config
from training.evaluate import evaluate
from training.train import train

CATEGORIES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


@pytest.fixture(scope="module")
def comp_set(tmp_path_factory):
    """4 items per category (28) and 4 Winoground-style groups."""
    out = tmp_path_factory.mktemp("comp") / "set"
    write_compositional(out, seed=0, size=4)
    return out


def _train(config, small_demo, comp_set, run, *extra):
    cfg = load_config(config, [
        f"data.train={small_demo / 'train'}", "data.batch_size=8", "data.workers=0", "data.shuffle_buffer=50",
        "schedule.steps=2", "schedule.warmup=1", "log.every=2", "checkpoint.every=0", "eval.every=0",
        "eval.retrieval=", "eval.zeroshot=", f"eval.compositional={comp_set}", "eval.batch_size=32",
        "precision=fp32", *extra])
    return train(cfg, run)


def _cli_record(run, comp_set, tmp_path) -> dict:
    """What ``python -m eval compositional`` writes for the run's final model."""
    out = tmp_path / "cli.json"
    eval_main(["compositional", "--model", str(run / "final"), "--dataset", "shapes", "--root", str(comp_set),
               "--batch-size", "32", "--output", str(out)])
    return json.loads(out.read_text())


def _as_cli(record_part: dict) -> dict:
    """metrics.jsonl's compact per-category scores, named and keyed as the CLI's JSON names them."""
    names = {**{c: f"shapes_crepe/{c}" for c in CATEGORIES}, "winoground": "shapes_winoground"}
    return {names[c]: m for c, m in record_part.items() if c != "mean"}


def _same(compact: dict, full: dict) -> None:
    assert set(compact) == set(full)
    for name, m in compact.items():
        assert m == {k: full[name][k] for k in m}, name


def test_training_reports_the_compositional_rows_equal_to_the_cli(small_demo, comp_set, tmp_path):
    run = tmp_path / "run"
    result = _train("training/configs/tiny.yaml", small_demo, comp_set, run)
    assert set(result) == {"compositional"} and result["compositional"]["items"] == 7 * 4 + 4
    report = (run / "report.md").read_text()
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in report.splitlines()
            if "(compositional)" in line}
    winoground = [f"winoground {s} (compositional)" for s in ("text", "image", "group")]
    assert list(rows) == [f"{c} (compositional)" for c in CATEGORIES] + winoground + [
        "mean of 7 categories (compositional)"]
    chance = {name: cells[-2] for name, cells in rows.items()}
    assert {chance[f"{c} (compositional)"] for c in CATEGORIES} == {"50.00"}
    assert [chance[name] for name in winoground] == ["25.00", "25.00", "16.67"]
    pure = result["compositional"]["metrics"]["embeddings"]
    swap = pure["swap_att"]
    assert rows["swap_att (compositional)"] == [f"{100 * swap['acc']:.2f} ± {100 * swap['acc_stderr']:.2f}", "50.00",
                                                f"{swap['acc'] / 0.5:.1f} |"]
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["eval"]["compositional"] == {"embeddings": pure}
    cli = _cli_record(run, comp_set, tmp_path)
    _same(_as_cli(pure), cli["categories"])
    assert pure["mean"] == {k: cli["metrics"][k] for k in pure["mean"]}
    assert "shapes" in report and f"--root {comp_set}" in report


def test_a_fusion_run_reports_the_itm_scores_beside_the_embeddings(small_demo, comp_set, tmp_path):
    run = tmp_path / "run"
    result = _train("training/configs/tiny_fusion.yaml", small_demo, comp_set, run, "eval.rerank_k=0",
                    "model.fusion.width=64", "model.fusion.depth=1")
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert set(record["eval"]["compositional"]) == {"embeddings", "itm"}
    itm = result["compositional"]["metrics"]["itm"]
    report = (run / "report.md").read_text()
    assert "| metric | held-out (%) | ITM-scored (%) | chance (%) | × chance |" in report
    pure = result["compositional"]["metrics"]["embeddings"]
    row = next(line for line in report.splitlines() if line.startswith("| replace_rel (compositional)"))
    m, i = pure["replace_rel"], itm["replace_rel"]
    assert row == (f"| replace_rel (compositional) | {100 * m['acc']:.2f} ± {100 * m['acc_stderr']:.2f} | "
                   f"{100 * i['acc']:.2f} ± {100 * i['acc_stderr']:.2f} | 50.00 | {m['acc'] / 0.5:.1f} |")
    cli = _cli_record(run, comp_set, tmp_path)
    _same(_as_cli(pure), cli["categories"])
    _same(_as_cli(itm), cli["itm"]["categories"])


def test_a_missing_set_is_one_clear_error(tmp_path):
    model = mc.create_model("tiny", seed=0).eval()
    missing = tmp_path / "no_such_set"
    with pytest.raises(UserError, match=f"dataset not found: {missing} .*python -m data_prep compositional "
                                        f"--out {missing}.*eval.compositional=''"):
        evaluate(model, EvalConfig(retrieval="", zeroshot="", compositional=str(missing)), torch.device("cpu"))


def test_the_demo_cli_builds_the_compositional_set_by_default(monkeypatch, tmp_path):
    import data_prep.demo as demo
    from data_prep.__main__ import main

    seen = {}

    def fake_build(out, **options):
        seen.update(options)
        return {"train": {"samples": 0}, "retrieval": {"images": 0}, "zeroshot": {"images": 0}}

    monkeypatch.setattr(demo, "build_demo", fake_build)
    main(["demo", "--out", str(tmp_path)])
    assert seen["scene_share"] == demo.DEMO_SCENE_SHARE == 0.0
    assert seen["compositional_size"] == demo.DEMO_COMPOSITIONAL_SIZE == 500
    assert load_config("training/configs/tiny.yaml").eval.compositional == "data/demo/compositional"
