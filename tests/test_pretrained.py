"""Every bundled model loads, and on freshly generated data reaches the accuracy its card states."""
import pytest
import torch

from xattn.registry import DEFAULT, MODELS_DIR, Pretrained, available, pretrained
from xattn.tasks import get_task
from xattn.train import COMPARED_VARIANTS, VARIANTS, make_batch

COMPARED = [f"{task}-{variant}" for task in ("variables", "induction") for variant in COMPARED_VARIANTS]
BUNDLED = list(available())
TEST_SEED = 271_828            # neither a training seed nor a card's eval seed


def test_the_eight_comparison_models_are_bundled():
    cards = available()
    assert set(COMPARED) <= set(cards)
    for name, card in cards.items():
        assert card["name"] == name and f"--name={name}" in card["command"]
        assert (MODELS_DIR / f"{name}.safetensors").stat().st_size <= 2_000_000
        assert (MODELS_DIR / f"{name}.json").exists() and (MODELS_DIR / f"{name}.md").exists()
        assert f"[{name}]({name}.md)" in (MODELS_DIR / "README.md").read_text()
    for task in ("variables", "induction"):
        row = " | ".join(f"{cards[f'{task}-{v}']['eval']['accuracy']:.2f}" for v in COMPARED_VARIANTS)
        assert f"| {task} | {row} |" in (MODELS_DIR / "README.md").read_text()


@pytest.mark.parametrize("name", BUNDLED)
def test_accuracy_on_fresh_data_matches_the_card(name):
    p = pretrained(name)
    assert isinstance(p, Pretrained) and p.name == name and not p.model.training
    card = p.card
    assert TEST_SEED not in (card["train"]["seed"], card["eval"]["seed"])
    layers = p.model.attn_layers
    options = VARIANTS[card["variant"]]
    assert layers.residual_attn == options.get("residual_attn", False)
    assert layers.selective == options.get("attn_selective", False)

    task = get_task(card["task"])
    assert p.tokenizer == task.tokenizer
    samples = sorted(task.samples(card["eval"]["size"], TEST_SEED), key=lambda s: len(s.text))   # less padding
    right = total = 0
    with torch.no_grad():
        for i in range(0, len(samples), 1000):
            chunk = samples[i:i + 1000]
            inputs, _ = make_batch(chunk, p.tokenizer)
            predicted = p.model(inputs).argmax(-1)
            for row, s in enumerate(chunk):             # read the answers off the samples, not the batch targets
                start = len(s.prompt)
                guess = p.tokenizer.decode(predicted[row, start:start + len(s.answer)].tolist())
                right += sum(a == b for a, b in zip(guess, s.answer, strict=False))
                total += len(s.answer)
    assert 100 * right / total == pytest.approx(card["eval"]["accuracy"], abs=1.0)


@pytest.mark.parametrize("name", BUNDLED)
def test_notable_heads_recomputed_from_the_weights(name):
    """The card's attention on the predicted key, recomputed one (query, key) cell at a time, and its ranking."""
    p = pretrained(name)
    task = get_task(p.card["task"])
    notable = p.card["notable_heads"]
    samples = task.samples(notable[0]["samples"], notable[0]["seed"])
    _, trace = p.model.run_with_trace(make_batch(samples, p.tokenizer)[0], stages=["attn"])
    attn = trace["attn"]
    cells = [(row, q, k) for row, s in enumerate(samples) for q, k in task.attention_targets(s)]
    mean = {(layer, head): sum(float(attn[layer, row, head, q, k]) for row, q, k in cells) / len(cells)
            for layer in range(attn.shape[0]) for head in range(attn.shape[2])}
    for h in notable:
        assert mean[h["layer"], h["head"]] == pytest.approx(h["attention_on_predicted_key"], abs=0.0006)
    assert mean[notable[0]["layer"], notable[0]["head"]] == pytest.approx(max(mean.values()), abs=1e-6)


def test_the_default_model_answers_its_example():
    p = pretrained()
    assert p.name == DEFAULT and p.card["task"] == "variables"
    body, query = p.example.rsplit("?", 1)
    latest = dict(a.split("=") for a in body.split(";") if a)[query]
    tokens = torch.tensor([p.tokenizer.encode(p.example)])
    logits, trace = p.model.run_with_trace(tokens, labels=[p.tokenizer.labels(tokens[0].tolist())])
    assert logits.shape == (1, tokens.shape[1], p.tokenizer.vocab_size)
    assert p.tokenizer.decode([int(logits[0, -1].argmax())]) == latest
    assert trace["attn"].shape[-1] == tokens.shape[1]


def test_unknown_names_and_characters_are_reported():
    p = pretrained()
    with pytest.raises(ValueError, match="variables-baseline.*variables-selective"):
        pretrained("variables-huge")
    with pytest.raises(ValueError, match="not in this model's alphabet"):
        p.tokenizer.encode("A=1;?A")


def test_available_prints_one_short_line_per_model():
    import json
    cards = available()
    shown = repr(cards).splitlines()
    assert len(shown) == len(BUNDLED) + 1 and all(len(line) < 100 for line in shown)
    for line, path in zip(shown[1:], sorted(MODELS_DIR.glob("*.card.json")), strict=True):
        card = json.loads(path.read_text())
        accuracy = card["eval"]["accuracy"]
        assert line.strip() == f"{card['name']}: {card['task']}, {card['variant']}, {accuracy:.1f}% accurate"
    assert isinstance(cards, dict) and cards[DEFAULT]["name"] == DEFAULT      # still the cards, by name
