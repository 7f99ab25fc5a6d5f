"""The task generators and the character tokenizer keep their promises, checked by independent parsing."""
import pytest

from xattn.tasks import TASKS, Brackets, Induction, VariableTracking, get_task
from xattn.tokenizer import BOS, PAD, CharTokenizer

N = 2000


def test_tokenizer_round_trip_and_labels():
    tok = CharTokenizer("ab=;")
    ids = tok.encode("a=b;")
    assert ids == [0, 2, 4, 3, 5]
    assert tok.bos_id == 0 and tok.pad_id == 1 and tok.vocab_size == 6
    assert tok.decode(ids + [tok.pad_id]) == "a=b;"
    assert tok.labels(ids + [tok.pad_id]) == [BOS, "a", "=", "b", ";", PAD]
    assert CharTokenizer.from_dict(tok.to_dict()) == tok


def test_tokenizer_names_unknown_characters():
    with pytest.raises(ValueError, match=r"'XZ' not in this model's alphabet"):
        CharTokenizer("abc").encode("aZbX")
    with pytest.raises(ValueError, match="repeats"):
        CharTokenizer("aba")


@pytest.mark.parametrize("name", list(TASKS))
def test_seeded_in_alphabet_and_within_length(name):
    task = get_task(name)
    samples = task.samples(N, seed=3)
    assert samples == task.samples(N, seed=3)
    assert samples != task.samples(N, seed=4)
    assert max(len(s.text) for s in samples) <= task.max_len
    assert set("".join(s.text for s in samples)) <= set(task.alphabet)
    task.tokenizer.encode(task.example)


@pytest.mark.parametrize("name", list(TASKS))
def test_attention_targets_point_at_the_answer_source(name):
    """The predicted key holds the character the query must output (for every task here)."""
    task = get_task(name)
    for s in task.samples(200, seed=5):
        labels = task.tokenizer.labels(task.tokenizer.encode(s.text))
        targets = task.attention_targets(s)
        assert [q for q, _ in targets] == list(range(len(s.prompt), len(s.text)))
        for (q, k), expected in zip(targets, s.answer, strict=True):
            assert k <= q
            if name == "brackets":
                assert "([{<".index(labels[k]) == ")]}>".index(expected)
            else:
                assert labels[k] == expected


def test_variables_answer_is_the_latest_assignment():
    task = VariableTracking()
    for s in task.samples(N, seed=11):
        body, query = s.prompt.rsplit("?", 1)
        assignments = [a.split("=") for a in body.split(";") if a]
        assert body.endswith(";") and all(len(v) == 1 and len(x) == 1 for v, x in assignments)
        latest = dict(assignments)                      # later assignments overwrite earlier ones
        history = [x for v, x in assignments if v == query]
        assert s.answer == latest[query] == history[-1]
        assert len(history) >= 2 and s.answer not in history[:-1]
        assert len(latest) <= task.num_vars
        assert task.min_assignments <= len(assignments) <= task.max_assignments


def test_induction_repeat_is_exact():
    task = Induction()
    for s in task.samples(N, seed=12):
        first, sep, second = s.text.partition("|")
        assert sep == "|" and first == second == s.answer and s.prompt == first + "|"
        assert task.min_string <= len(first) <= task.max_string


def test_brackets_answer_closes_the_innermost_open_bracket():
    task = Brackets()
    pairs = ["()", "[]", "{}", "<>"]
    for s in task.samples(N, seed=13):
        rest = s.prompt
        while any(p in rest for p in pairs):            # strike matched pairs until none is left
            for p in pairs:
                rest = rest.replace(p, "")
        assert rest and set(rest) <= set("([{<")
        assert rest[-1] + s.answer in pairs
        assert len(Brackets.open_brackets(s.prompt)) == len(rest)


def test_unknown_task():
    with pytest.raises(ValueError, match="variables, induction, brackets"):
        get_task("sorting")
