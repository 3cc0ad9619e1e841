"""The LM-head losses of distillation (KL and CE) without ever holding the (N, V) logits.

At GPT-2's vocabulary (V = 50257) one micro-batch of N = 8192 positions has 1.6 GB of fp32 logits
per model, and the plain path (losses.py) keeps several such tensors alive at once: student and
teacher logits, both log-softmaxes, the KL's elementwise product and the logits' gradient. Here the
head runs chunk by chunk of positions: each chunk's student and teacher logits are made from the
final hidden states, turned into the loss and its gradient, and dropped. The gradients of the hidden
states and of the head weight are accumulated during the forward pass (as Liger-Kernel's fused
linear cross-entropy does), so backward only scales them; peak memory is a few (chunk, V) tensors.

The result equals losses.kl_loss / ce_loss on the full logits up to float summation order
(tests/compress/test_fused_head.py checks values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.distillation.config import FUSED_HEAD_CHUNK as DEFAULT_CHUNK


class _FusedHeadLosses(torch.autograd.Function):
    """(kl, ce) from hidden states and head weights; gradients for h and weight only."""

    @staticmethod
    def forward(ctx, h, weight, t_h, t_weight, targets, temperature, want_kl, want_ce, chunk):
        # h (N, C), weight (V, C): the student's final hidden states and head; t_h (N, Ct), t_weight
        # (V, Ct) the teacher's (None without kl); targets (N,) the next tokens (None without ce)
        n, T = h.shape[0], temperature
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        kl = torch.zeros((), dtype=torch.float64)
        ce = torch.zeros((), dtype=torch.float64)
        wanted = [k for k, on in (("kl", want_kl), ("ce", want_ce)) if on and grad]
        g_h = {k: torch.zeros_like(h, dtype=torch.float32) for k in wanted}  # d term / d h, (N, C)
        g_w = {k: torch.zeros_like(weight, dtype=torch.float32) for k in wanted}  # d term / d weight, (V, C)
        for i in range(0, n, chunk):
            hs = h[i:i + chunk].float()  # (c, C)
            s = hs @ weight.float().t()  # (c, V) student logits of this chunk
            terms = []
            if want_kl:
                t = t_h[i:i + chunk].float() @ t_weight.float().t()  # (c, V)
                log_q = F.log_softmax(s / T, dim=-1)
                log_p = F.log_softmax(t / T, dim=-1)
                p = log_p.exp()
                kl += (p * (log_p - log_q)).sum().double()
                if grad:  # d/ds of T^2 * KL(p || q) / N is T * (q - p) / N
                    terms.append(("kl", log_q.exp_().sub_(p).mul_(T / n)))
                del t, log_p, p
            if want_ce:
                log_s = F.log_softmax(s, dim=-1)
                y = targets[i:i + chunk]
                ce -= log_s.gather(1, y[:, None]).sum().double()
                if grad:  # d/ds of mean CE is (softmax(s) - onehot(y)) / N
                    g = log_s.exp_()
                    g[torch.arange(len(y)), y] -= 1
                    terms.append(("ce", g.div_(n)))
                del log_s
            for k, g in terms:  # g (c, V)
                g_h[k][i:i + chunk] = g @ weight.float()
                g_w[k].addmm_(g.t(), hs)
            del s, terms
        if grad:
            ctx.save_for_backward(g_h.get("kl"), g_h.get("ce"), g_w.get("kl"), g_w.get("ce"))
        ctx.dtypes = (h.dtype, weight.dtype)
        return (kl * T ** 2 / n).float(), (ce / n).float()

    @staticmethod
    def backward(ctx, d_kl, d_ce):
        gh_kl, gh_ce, gw_kl, gw_ce = ctx.saved_tensors
        d_h = sum(g * d for g, d in ((gh_kl, d_kl), (gh_ce, d_ce)) if g is not None)
        d_w = sum(g * d for g, d in ((gw_kl, d_kl), (gw_ce, d_ce)) if g is not None)
        return d_h.to(ctx.dtypes[0]), d_w.to(ctx.dtypes[1]), None, None, None, None, None, None, None


def fused_head_losses(h: torch.Tensor, weight: torch.Tensor, teacher_h: torch.Tensor | None,
                      teacher_weight: torch.Tensor | None, targets: torch.Tensor | None, temperature: float,
                      chunk: int = DEFAULT_CHUNK) -> dict[str, torch.Tensor]:
    """{"kl": ..., "ce": ...} for the terms asked for: kl when teacher_h is given, ce when targets are.

    h (N, C) and weight (V, C): the student's hidden states after ln_f and its LM head (logits =
    h @ weight.T, GPT-2's bias-free head); teacher_h (N, Ct), teacher_weight (V, Ct) the teacher's.
    kl = T^2 * mean KL(p_T || q_T) as losses.kl_loss; ce = mean cross-entropy as losses.ce_loss.
    """
    want_kl, want_ce = teacher_h is not None, targets is not None
    if not (want_kl or want_ce):
        raise ValueError("fused_head_losses: give teacher_h (kl) and/or targets (ce)")
    if want_kl and teacher_weight is None:
        raise ValueError("fused_head_losses: teacher_h needs teacher_weight")
    if chunk < 1:
        raise ValueError(f"fused_head_losses: chunk must be >= 1, got {chunk}")
    with torch.autocast(h.device.type, enabled=False):  # fp32 by design: autocast would mix dtypes in addmm_
        kl, ce = _FusedHeadLosses.apply(h, weight, teacher_h, teacher_weight, targets, temperature, want_kl,
                                        want_ce, chunk)
    return {**({"kl": kl} if want_kl else {}), **({"ce": ce} if want_ce else {})}
