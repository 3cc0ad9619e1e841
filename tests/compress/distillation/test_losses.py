import math

import pytest
import torch

from compress.distillation import StudentInit, student_from_teacher
from compress.distillation.losses import HiddenProjection, ce_loss, even_layer_map, hidden_loss, kl_loss
from compress.distillation.student import pick_layers
from compress.errors import UserError
from tests.tiny_models import tiny_model


def test_kl_matches_hand_computation_and_scales_by_t_squared():
    student = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2) at any temperature
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4) at T=1
    at_1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_loss(student, teacher, 1.0).item() == pytest.approx(at_1, rel=1e-6)
    # at T=2 the teacher's logits halve: p = (sqrt3, 1) / (sqrt3 + 1), and the KL is multiplied by 4
    p0 = math.sqrt(3) / (math.sqrt(3) + 1)
    at_2 = p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)
    assert kl_loss(student, teacher, 2.0).item() == pytest.approx(4 * at_2, rel=1e-6)


def test_kl_is_averaged_over_positions():
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # second position: KL 0
    one = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_loss(student, teacher, 1.0).item() == pytest.approx(one / 2, rel=1e-6)


def test_kl_is_zero_when_student_is_teacher():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0)) * 5
    for t in (0.5, 1.0, 4.0):
        assert abs(kl_loss(logits, logits.clone(), t).item()) < 1e-6
    model = tiny_model(seed=3)
    x = torch.randint(0, 256, (2, 16))
    out = model(input_ids=x).logits.flatten(0, 1)
    assert abs(kl_loss(out, out.detach().clone(), 2.0).item()) < 1e-5


def test_ce_matches_hand_computation():
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    assert ce_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)


def test_hidden_losses_match_hand_computation():
    s = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    # cos = 1/sqrt2 for the first pair and 1 for the second
    assert hidden_loss(s, t, "cosine").item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2, rel=1e-6)
    assert hidden_loss(s, t, "mse").item() == pytest.approx((0 + 1 + 1 + 0) / 4, rel=1e-6)
    assert hidden_loss(t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)


def test_projection_is_identity_for_equal_widths_and_learned_otherwise():
    h = torch.randn(5, 8)
    assert torch.equal(HiddenProjection(2, 8, 8)(1, h), h)
    proj = HiddenProjection(2, 8, 12)
    assert proj(0, h).shape == (5, 12) and len(list(proj.parameters())) == 2


def test_layer_maps():
    assert even_layer_map(3, 6) == [1, 3, 5]
    assert even_layer_map(4, 4) == [0, 1, 2, 3]
    assert even_layer_map(1, 12) == [11]
    assert pick_layers(6, 3) == [0, 2, 5]
    assert pick_layers(6, 1) == [5]


def test_student_with_every_teacher_block_is_the_teacher():
    teacher = tiny_model(seed=1, n_layer=3)
    student = student_from_teacher(teacher, StudentInit(n_layer=3)).eval()
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.allclose(student(input_ids=x).logits, teacher(input_ids=x).logits, atol=1e-5)


def test_student_keeps_the_named_blocks_and_slices_mlp_exactly():
    teacher = tiny_model(seed=2, n_layer=3)
    with torch.no_grad():  # silence half of every MLP: slicing those neurons away changes no logit
        for block in teacher.transformer.h:
            block.mlp.c_fc.weight[:, 128:] = 0
            block.mlp.c_fc.bias[128:] = -1e4  # gelu(-1e4) == 0
    student = student_from_teacher(teacher, StudentInit(layers=[0, 1, 2], n_inner=128)).eval()
    assert student.config.n_inner == 128 and student.transformer.h[0].mlp.c_fc.weight.shape == (64, 128)
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.allclose(student(input_ids=x).logits, teacher(input_ids=x).logits, atol=1e-4)
    shallow = student_from_teacher(teacher, StudentInit(layers=[2]))
    assert torch.equal(shallow.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[2].attn.c_attn.weight)
    assert shallow.lm_head.weight.data_ptr() == shallow.transformer.wte.weight.data_ptr()  # still tied


def test_student_that_does_not_fit_the_teacher_is_a_user_error():
    teacher = tiny_model(seed=0, n_layer=2)
    with pytest.raises(UserError, match="student.layers"):
        student_from_teacher(teacher, StudentInit(layers=[0, 2]))
    with pytest.raises(UserError, match="n_inner"):
        student_from_teacher(teacher, StudentInit(n_layer=1, n_inner=1000))
