"""The trainer lowers the loss, writes a loadable checkpoint and card, and is deterministic under a seed."""
import json
import shlex

import pytest
import torch
import torch.nn.functional as F

import xattn
from xattn.registry import pretrained
from xattn.tasks import Sample, get_task
from xattn.train import IGNORE, TrainConfig, build_model, evaluate, main, make_batch, parse_args, train

TINY = dict(task="variables", variant="both", steps=60, batch_size=16, lr=1e-2, warmup=5, dim=16, depth=1,
            heads=2, dim_head=8, eval_size=200, threads=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train(TrainConfig(**TINY, out=str(out)), progress=False)


def test_make_batch_scores_only_the_answer():
    tok = get_task("variables").tokenizer
    samples = [Sample("a=1;?a", "1"), Sample("b=2;b=3;?b", "3")]
    inputs, targets = make_batch(samples, tok)
    assert inputs.shape == targets.shape == (2, 11)
    assert tok.labels(inputs[1].tolist()) == ["<bos>", *"b=2;b=3;?b"]
    assert tok.labels(inputs[0].tolist()) == ["<bos>", *"a=1;?a", *["<pad>"] * 4]
    scored = targets != IGNORE
    assert scored.sum(dim=1).tolist() == [1, 1]
    assert scored[0, 6] and scored[1, 10]                # the positions reading the queried variable
    assert tok.decode(targets[scored].tolist()) == "13"


def test_trainer_lowers_loss_and_writes_a_loadable_checkpoint(run):
    out, card = run
    assert card["train"]["loss_last"] < card["train"]["loss_first"] - 0.5
    model = xattn.load(out / "variables-both.safetensors")
    task = get_task("variables")
    torch.manual_seed(card["train"]["seed"])
    untrained = build_model(TrainConfig(**TINY), task)
    inputs, targets = make_batch(task.samples(500, seed=99), task.tokenizer)
    with torch.no_grad():
        before, after = (F.cross_entropy(m(inputs).flatten(0, 1), targets.flatten(), ignore_index=IGNORE).item()
                         for m in (untrained, model))
    assert after < before - 0.5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["variables-both.safetensors", "variables-both.json", "variables-both.card.json", "variables-both.md",
         "README.md"])
    assert json.loads((out / "variables-both.card.json").read_text()) == card
    assert model.attn_layers.residual_attn and model.attn_layers.selective
    # the card's accuracy, recomputed from the written weights on the card's eval seed, is exact
    assert evaluate(model, task, 200, card["eval"]["seed"]) == pytest.approx(card["eval"]["accuracy"], abs=0.005)
    loaded = pretrained("variables-both", directory=out)
    assert loaded.example == get_task("variables").example and not loaded.model.training
    assert "| [variables-both](variables-both.md) | variables | both |" in (out / "README.md").read_text()


def test_deterministic_under_a_seed_and_the_card_command_replays_the_run(run, tmp_path):
    out, card = run
    argv = shlex.split(card["command"])
    assert argv[:3] == ["python", "-m", "xattn.train"]
    config = parse_args(argv[3:])
    assert config == TrainConfig(**TINY, out=str(out))
    config.out = str(tmp_path)
    threads = torch.get_num_threads()
    again = train(config, progress=False)
    assert torch.get_num_threads() == threads          # the run's thread count does not leak out
    first = xattn.load(out / "variables-both.safetensors").state_dict()
    second = xattn.load(tmp_path / "variables-both.safetensors").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again["eval"] == card["eval"] and again["train"]["loss_last"] == card["train"]["loss_last"]


def test_cli_entry_point(tmp_path, capsys):
    main(["--task", "variables", "--steps", "3", "--batch-size", "4", "--dim", "8", "--depth", "1", "--heads", "1",
          "--dim-head", "8", "--eval-size", "20", "--threads", "1", "--out", str(tmp_path), "--name", "tiny"])
    assert "tiny: " in capsys.readouterr().out
    assert (tmp_path / "tiny.safetensors").exists() and (tmp_path / "tiny.json").exists()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="differ"):
        TrainConfig(seed=5, eval_seed=5)
    with pytest.raises(SystemExit):
        parse_args(["--variant", "fancy"])
