"""Prompt candidates, template/verbalizer overrides, and the forward-only prompt selection on dev.

    python -m pytest tests/zo_edge/test_prompts.py -q

The selection rule is checked with a scripted oracle whose per-row NLLs are written by hand (which prompt favours
which label word), so the expected choice follows from the numbers, not from the code; the tiny-model test only
checks the plumbing (each candidate's score equals ``evaluate`` of that prompt).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runtime.tokenizer import Tokenizer
from zo_edge.batching import candidate_batch
from zo_edge.evaluate import evaluate
from zo_edge.prompts import chosen, format_prompt_table, select_prompt, with_bos_variants, zero_shot_best
from zo_edge.tasks import Example, Prompt, Task, TaskError, get_task, list_tasks

# -------------------------------------------------------------------------------------------------------------------
# Overrides


def test_builtin_task_accepts_template_and_label_spec():
    rt = get_task("rotten-tomatoes")
    t = rt.with_prompt("Review: {text}\nSentiment:", "fresh=positive,rotten=negative")
    assert t.classes == ["rotten", "fresh"], "class order (= class index) must not follow the spec's order"
    assert t.verbalizer == {"rotten": [" negative"], "fresh": [" positive"]}
    assert t.render(Example({"text": "dull"}, "rotten")) == "Review: dull\nSentiment:"
    assert rt.template == "{text} It was" and rt.verbalizer["fresh"] == [" great"], "the original is unchanged"
    assert rt.with_prompt(verbalizer={"rotten": ["bad"], "fresh": ["good"]}).verbalizer["fresh"] == [" good"]


def test_override_errors_are_one_line():
    rt = get_task("rotten-tomatoes")
    with pytest.raises(TaskError, match="task's classes"):
        rt.with_prompt(verbalizer="neg=bad,pos=good")
    with pytest.raises(TaskError, match="names"):
        rt.with_prompt("{review} It was")
    with pytest.raises(TaskError, match="Prompt already carries"):
        rt.with_prompt(rt.prompt_candidates()[1], "rotten=bad,fresh=good")


@pytest.mark.parametrize("name", ["rotten-tomatoes", "trec"])
def test_builtin_candidates_are_valid_and_start_with_the_default(name, smollm2_tok):
    task = get_task(name)
    cands = task.prompt_candidates()
    assert len(cands) >= 4
    assert (cands[0].template, cands[0].verbalizer) == (task.template, task.verbalizer)
    assert len({c.name for c in cands}) == len(cands)
    ex = Example({"text": "How far is it from Denver to Aspen ?"}, task.classes[0])
    for c in cands:
        variant = task.with_prompt(c)
        assert variant.classes == task.classes
        feeds, _, _ = candidate_batch(smollm2_tok, [ex], variant, 256)
        ids = feeds["input_ids"][0][feeds["attention_mask"][0] == 1]
        assert ids[0] == smollm2_tok.bos_token_id and ids[1] != smollm2_tok.bos_token_id, f"{c.name}: one BOS"
        for ws in variant.verbalizer.values():
            assert all(smollm2_tok.encode(w) for w in ws)


def test_no_bos_variants_leave_out_bos_except_for_chat_forms(smollm2_tok, tiny_tok):
    task = get_task("rotten-tomatoes")
    ex = Example({"text": "a dull film"}, "rotten")
    cands = with_bos_variants(task.prompt_candidates(), smollm2_tok, task, ex)
    names = [c.name for c in cands]
    assert (
        "review-sentiment/no-bos" in names
        and names.index("review-sentiment/no-bos") == names.index("review-sentiment") + 1
    ), "each variant right after its prompt (a tie goes to the BOS one, as before)"
    assert "chat/no-bos" not in names, "the chat form opens with <|im_start|>, the BOS itself"
    assert len(cands) == 2 * len(task.prompt_candidates()) - 1
    for c in cands:
        feeds, _, _ = candidate_batch(smollm2_tok, [ex], task.with_prompt(c), 256)
        ids = feeds["input_ids"][0][feeds["attention_mask"][0] == 1]
        assert (ids[0] == smollm2_tok.bos_token_id) == (c.bos or c.name == "chat"), c.name
        assert ids[1] != smollm2_tok.bos_token_id, f"{c.name}: never two BOS"
        assert task.with_prompt(c).bos is c.bos and c.describe().endswith("(no BOS)") is not c.bos
    assert task.with_prompt(cands[1]).with_prompt("{text} Q").bos is False, "a new template keeps the BOS choice"
    no_bos_tok = Tokenizer(tiny_tok.model_dir, pad_token_id=0)  # a tokenizer without BOS: nothing to leave out
    assert with_bos_variants(task.prompt_candidates(), no_bos_tok, task, ex) == task.prompt_candidates()


def test_user_data_candidates_use_its_fields_and_words(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("msg,label\nhello there,ham\nWIN NOW,spam\nlunch?,ham\nfree money,spam\nok,ham\n")
    task = get_task("user-data", path=str(path), text_fields=["msg"], test_size=1)
    cands = task.prompt_candidates()
    assert [c.name for c in cands] == ["default", "category", "chat"]
    chat = task.with_prompt(cands[2])
    assert chat.verbalizer == {"ham": ["ham"], "spam": ["spam"]}, "after the assistant turn's newline: no space"
    assert "as ham or spam" in chat.render(Example({"msg": "x"}, "ham"))
    assert task.with_prompt(cands[1]).render(Example({"msg": "x"}, "ham")) == "x\nCategory:"


def test_every_registered_task_has_candidates():
    assert set(list_tasks()) == {"rotten-tomatoes", "trec", "user-data"}, "add the new task to the tests above"


# -------------------------------------------------------------------------------------------------------------------
# Selection, with a scripted oracle. Tiny word tokenizer ids: a=3 c=5 It=6 bad=8 good=9 Q=12.

TOY = Task(name="toy", template="{text} Q", verbalizer={"neg": [" bad"], "pos": [" good"]})
ALWAYS_POS = Prompt("always-pos", "{text} Q", {"neg": [" bad"], "pos": [" good"]})
C_MEANS_NEG = Prompt("c-means-neg", "{text} It", {"neg": [" bad"], "pos": [" good"]})


class ScriptedOracle:
    """Row NLL 0.1 for the favoured label word, 2.0 for the other: after "Q" " good" is favoured; after "It"
    " bad" is favoured when the text holds "c", else " good"."""

    manifest = SimpleNamespace(has=lambda feature: False)  # no candidate scoring: evaluate() runs one row per word

    def run(self, batch):
        nll = []
        for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True):
            row = ids[mask == 1].tolist()
            prompt, word = row[:-1], row[-1]
            favoured = 8 if (6 in prompt and 5 in prompt) else 9
            nll.append(0.1 if word == favoured else 2.0)
        return {"row_nll": np.array(nll), "row_count": np.ones(len(nll))}


def _dev(n_pos_plain: int, n_pos_c: int, n_neg: int) -> list[Example]:
    return (
        [Example({"text": f"a {'a ' * i}"}, "pos") for i in range(n_pos_plain)]
        + [Example({"text": f"a c {'a ' * i}"}, "pos") for i in range(n_pos_c)]
        + [Example({"text": f"c {'a ' * i}"}, "neg") for i in range(n_neg)]
    )


def test_imbalanced_dev_selects_on_macro_f1(tiny_tok):
    # 9 pos (2 of them hold "c"), 1 neg. always-pos: acc 0.9, macro-F1 (18/19 + 0) / 2 = 0.474.
    # c-means-neg: acc 0.8, F1(neg) = 2/(2+2) = 0.5, F1(pos) = 14/16 = 0.875, macro-F1 0.6875.
    scores = select_prompt(ScriptedOracle(), tiny_tok, TOY, _dev(7, 2, 1), [ALWAYS_POS, C_MEANS_NEG], 32)
    assert [s.accuracy for s in scores] == pytest.approx([0.9, 0.8])
    assert [s.macro_f1 for s in scores] == pytest.approx([18 / 19 / 2, 0.6875])
    assert chosen(scores).prompt.name == "c-means-neg" and zero_shot_best(scores).prompt.name == "c-means-neg"


def test_balanced_dev_selects_on_accuracy_then_f1_then_order(tiny_tok):
    # 4 pos (2 with "c"), 4 neg: always-pos acc 0.5; c-means-neg acc 6/8
    scores = select_prompt(ScriptedOracle(), tiny_tok, TOY, _dev(2, 2, 4), [ALWAYS_POS, C_MEANS_NEG], 32)
    assert [s.accuracy for s in scores] == pytest.approx([0.5, 0.75])
    assert chosen(scores).prompt.name == "c-means-neg"
    same = select_prompt(ScriptedOracle(), tiny_tok, TOY, _dev(2, 2, 4), [C_MEANS_NEG, C_MEANS_NEG], 32)
    assert [s.chosen for s in same] == [True, False], "a tie goes to the earlier candidate"
    assert [s.zero_shot_best for s in same] == [True, False]
    table = format_prompt_table(scores)
    assert table.count("\n") == 3 and table.count("| *z |") == 1 and "0.750 ± 0.153 | 0.733 | 0.750 |" in table


# Ranks the dev split perfectly but favours " good" everywhere: " bad" gets closer the more "c" a text holds
RANKS_BIASED = Prompt("ranks-biased", "{text} Q Q", {"neg": [" bad"], "pos": [" good"]})


class GradedOracle(ScriptedOracle):
    """As ScriptedOracle, but after "Q Q" " good" costs 0.1 and " bad" 2.0 - 0.6 x (number of "c" in the text)."""

    def run(self, batch):
        out = super().run(batch)
        for i, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
            row = ids[mask == 1].tolist()
            if row[-3:-1] == [12, 12]:
                out["row_nll"][i] = 0.1 if row[-1] == 9 else 2.0 - 0.6 * row.count(5)
        return out


def test_training_prompt_is_chosen_on_auc_and_the_zero_shot_one_on_accuracy(tiny_tok):
    pos = [Example({"text": t}, "pos") for t in ("a", "a a", "a c")]
    neg = [Example({"text": t}, "neg") for t in ("c c", "c c a", "c c a a")]
    scores = select_prompt(GradedOracle(), tiny_tok, TOY, pos + neg, [C_MEANS_NEG, RANKS_BIASED], 32)
    # c-means-neg answers "a c" wrong: acc 5/6, and its AUC the same (2 of 3 pos above every neg, one tied);
    # ranks-biased answers pos for all (acc 0.5) but every pos margin (1.9, 1.9, 1.3) is above every neg's (0.7)
    assert [s.accuracy for s in scores] == pytest.approx([5 / 6, 0.5])
    assert [s.auc for s in scores] == pytest.approx([5 / 6, 1.0])
    assert chosen(scores).prompt.name == "ranks-biased", "train from the prompt whose scores rank the classes"
    assert zero_shot_best(scores).prompt.name == "c-means-neg", "answer untrained with the most accurate one"
    assert "| * | ranks-biased" in format_prompt_table(scores) and "| z | c-means-neg" in format_prompt_table(scores)


def test_max_len_zero_sizes_each_candidate_from_its_dev_lengths(tiny_tok):
    long = Prompt("long", "a a a a a a a a a a a a {text} Q", ALWAYS_POS.verbalizer)  # 12 tokens more
    dev = _dev(2, 2, 4)  # needs 1 (BOS) + 1..4 text + 1 (Q) + 1 (word) tokens: at most 7, rounded up to 8
    scores = select_prompt(ScriptedOracle(), tiny_tok, TOY, dev, [ALWAYS_POS, long], 0)
    assert [s.max_len for s in scores] == [8, 24] and [s.truncated for s in scores] == [0, 0]


class BosHurtsOracle(ScriptedOracle):
    """As ScriptedOracle after "It", but a row that opens with BOS (id 1) always favours " good"."""

    def run(self, batch):
        out = super().run(batch)
        for i, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
            row = ids[mask == 1].tolist()
            if row[0] == 1:
                out["row_nll"][i] = 0.1 if row[-1] == 9 else 2.0
        return out


def test_selection_tries_the_task_candidates_without_bos(tiny_tok):
    task = Task(name="toy", template="{text} It", verbalizer={"neg": [" bad"], "pos": [" good"]})
    scores = select_prompt(BosHurtsOracle(), tiny_tok, task, _dev(2, 2, 4), max_len=32)
    assert [s.prompt.name for s in scores] == ["default", "default/no-bos"]
    assert [s.accuracy for s in scores] == pytest.approx([0.5, 0.75])
    assert chosen(scores).prompt.bos is False
    given = select_prompt(BosHurtsOracle(), tiny_tok, task, _dev(2, 2, 4), [C_MEANS_NEG], 32)
    assert [s.prompt.name for s in given] == ["c-means-neg"], "given candidates are scored as given"


def test_selection_refuses_empty_dev(tiny_tok):
    with pytest.raises(TaskError, match="dev split is empty"):
        select_prompt(ScriptedOracle(), tiny_tok, TOY, [], [ALWAYS_POS], 32)


def test_select_prompt_on_a_tiny_model_matches_evaluate(tiny_lm_dirs):
    """Plumbing only (random weights): each candidate's dev score is what evaluate() gives for that prompt."""
    from runtime.oracle import Oracle
    from runtime.session import GraphSession
    from zo_edge.data import load_tokenizer

    model = tiny_lm_dirs["fp32"]
    oracle, tok = Oracle(GraphSession(model)), load_tokenizer(model)
    task = get_task("rotten-tomatoes")
    dev = task.load(seed=0, k=4).dev
    cands = task.prompt_candidates()[:3]
    scores = select_prompt(oracle, tok, task, dev, cands, max_len=96)
    assert sum(s.chosen for s in scores) == 1 and [s.n for s in scores] == [len(dev)] * 3
    for s, c in zip(scores, cands, strict=True):
        r = evaluate(oracle, tok, task.with_prompt(c), dev, max_len=96)
        assert (s.accuracy, s.macro_f1) == pytest.approx((r.accuracy, r.macro_f1))


def test_the_before_is_the_better_on_test_of_the_two_prompts(tiny_tok):
    from zo_edge.train import Prepared, zero_shot_baseline

    pos = [Example({"text": t}, "pos") for t in ("a", "a a", "a c")]
    neg = [Example({"text": t}, "neg") for t in ("c c", "c c a", "c c a a")]
    scores = select_prompt(GradedOracle(), tiny_tok, TOY, pos + neg, [C_MEANS_NEG, RANKS_BIASED], 32)
    cfg = SimpleNamespace(max_len=32, length_normalize=False)
    p = Prepared(cfg, GradedOracle(), tiny_tok, TOY.with_prompt(RANKS_BIASED), SimpleNamespace(test=pos + neg), scores)
    before, name = zero_shot_baseline(p, 0)
    assert name == "c-means-neg" and before.accuracy == pytest.approx(5 / 6), "not the training prompt's 0.5"
    p.data = SimpleNamespace(test=pos)  # all positive: the always-pos training prompt is the better one here
    before, name = zero_shot_baseline(p, 0)
    assert name == "ranks-biased" and before.accuracy == 1.0


def test_auto_template_trains_from_the_auc_choice_and_evaluates_with_the_zero_shot_one(tiny_tok):
    from zo_edge.train import resolve_prompt

    class TwoPrompts(Task):
        def prompt_candidates(self):
            return [C_MEANS_NEG, RANKS_BIASED]

    pos = [Example({"text": t}, "pos") for t in ("a", "a a", "a c")]
    neg = [Example({"text": t}, "neg") for t in ("c c", "c c a", "c c a a")]
    task, data = TwoPrompts(name="toy", template="{text} Q", verbalizer=TOY.verbalizer), SimpleNamespace(dev=pos + neg)
    for training, want in ((True, RANKS_BIASED), (False, C_MEANS_NEG)):
        cfg = SimpleNamespace(template="auto", max_len=32, labels="", bos=True)
        picked, scores = resolve_prompt(cfg, GradedOracle(), tiny_tok, task, data, training=training)
        assert (picked.template, cfg.template) == (want.template, want.template), f"training={training}"
        assert len(scores) == 4, "each candidate with and without BOS"
