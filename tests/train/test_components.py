"""The pieces the command is made of: batches, augmentation seeding, BatchNorm modes, schedules, baselines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lookaround_fused.train.augment import train_transform
from lookaround_fused.train.batchnorm import BranchBatchNorm, recomputed_batchnorm
from lookaround_fused.train.cli import parse_config
from lookaround_fused.train.config import RECIPES
from lookaround_fused.train.data import ImageTensors, MinibatchSampler, MultiViewDataset
from lookaround_fused.train.errors import UsageError
from lookaround_fused.train.methods import ForwardBackward, LookaheadMethod, LookaroundMethod
from lookaround_fused.train.models import build_model
from lookaround_fused.train.schedule import LearningRateSchedule


def _epoch(sampler: MinibatchSampler, epoch: int, **kwargs) -> list[list[tuple[int, ...]]]:
    sampler.select(0, epoch, **kwargs)
    return [[indices for _, _, indices in batch] for batch in sampler]


def test_shared_minibatch_gives_every_branch_the_same_images_once_per_epoch() -> None:
    sampler = MinibatchSampler(dataset_size=10, batch_size=3, num_views=3, independent=False, seed=1)
    batches = _epoch(sampler, 0)
    assert len(batches) == 3  # the partial fourth batch is dropped
    assert all(len(set(indices)) == 1 for batch in batches for indices in batch)
    seen = [indices[0] for batch in batches for indices in batch]
    assert len(set(seen)) == 9
    assert _epoch(sampler, 0) == batches and _epoch(sampler, 1) != batches
    assert _epoch(sampler, 0, start=1, limit=1) == batches[1:2]


def test_independent_batches_shuffle_each_branch_separately() -> None:
    sampler = MinibatchSampler(dataset_size=12, batch_size=12, num_views=3, independent=True, seed=1)
    (batch,) = _epoch(sampler, 0)
    columns = list(zip(*batch))
    assert all(sorted(column) == list(range(12)) for column in columns)
    assert columns[0] != columns[1] != columns[2]


def test_views_are_a_function_of_the_key_and_leave_the_global_generator_alone() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    recipe = RECIPES["digits"]
    dataset = MultiViewDataset(ImageTensors(images, torch.arange(4)),
                               [train_transform(recipe, 8, "randaugment")] * 2, seed=0)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    views, labels = dataset[(0, 3, (2, 2))]
    assert torch.equal(torch.get_rng_state(), state)
    assert labels.tolist() == [2, 2]
    assert not torch.equal(views[0], views[1])  # each branch draws its own augmentation
    again, _ = dataset[(0, 3, (2, 2))]
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    next_epoch, _ = dataset[(0, 4, (2, 2))]
    assert not torch.equal(views[0], next_epoch[0])


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(2))


def test_branch_batchnorm_keeps_one_set_per_branch_and_averages_them() -> None:
    model = _bn_model()
    branch_bn = BranchBatchNorm(model, num_branches=2)
    bn = model[0]
    for branch, value in ((0, 1.0), (1, 3.0)):
        branch_bn.activate(branch)
        bn.running_mean.fill_(value)
    branch_bn.activate(0)
    assert bn.running_mean.tolist() == [1.0, 1.0]
    with branch_bn.averaged():
        assert bn.running_mean.tolist() == [2.0, 2.0]
    assert bn.running_mean.tolist() == [1.0, 1.0]
    branch_bn.average()
    branch_bn.activate(1)
    assert bn.running_mean.tolist() == [2.0, 2.0]


def test_recomputed_batchnorm_is_the_plain_average_and_is_undone() -> None:
    model = _bn_model()
    inputs = [torch.tensor([[0.0, 4.0], [2.0, 4.0]]), torch.tensor([[4.0, 8.0], [6.0, 8.0]])]
    with recomputed_batchnorm(model, inputs):
        assert model[0].running_mean.tolist() == [3.0, 6.0]
    assert model[0].running_mean.tolist() == [0.0, 0.0] and model[0].running_var.tolist() == [1.0, 1.0]


def test_schedule_warms_up_then_follows_cosine_or_steps() -> None:
    cosine = LearningRateSchedule(base_lr=0.1, steps_per_epoch=10, total_steps=100, warmup_steps=10, kind="cosine",
                                  milestones=(), gamma=0.1, min_lr=1e-5)
    assert [cosine(s) for s in (0, 9)] == [0.1, 1.0]
    assert cosine(10) == 1.0 and cosine(55) == pytest.approx((1 + 1e-4) / 2)
    assert cosine(100) == pytest.approx(1e-4)
    steps = LearningRateSchedule(base_lr=0.1, steps_per_epoch=10, total_steps=100, warmup_steps=10, kind="multistep",
                                 milestones=(3, 6), gamma=0.2, min_lr=0.0)
    assert [steps(s) for s in (29, 30, 59, 60)] == pytest.approx([1.0, 0.2, 0.2, 0.04])
    swa = LearningRateSchedule(base_lr=0.1, steps_per_epoch=10, total_steps=100, warmup_steps=0, kind="multistep",
                               milestones=(), gamma=0.1, min_lr=0.0, swa_start_step=50, swa_lr=0.05)
    assert [swa(s) for s in (49, 50, 55, 60, 99)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.5])
    assert math.isclose(swa(55), 0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 2)))


def _linear_run(cfg_flags: list[str]) -> tuple[nn.Module, ForwardBackward, object]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    cfg = parse_config(["--backend", "eager", *cfg_flags])
    run = ForwardBackward(model, None, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"))
    return model, run, cfg


def test_a_step_the_gradient_scaler_skips_is_reported_and_not_counted_by_lookahead() -> None:
    model, _, cfg = _linear_run(["--num-branches", "1"])
    run = ForwardBackward(model, None, torch.amp.GradScaler("cpu", init_scale=4.0), torch.device("cpu"))
    method = LookaheadMethod(model, cfg, run)
    before = [p.detach().clone() for p in model.parameters()]
    method.train_minibatch([torch.full((2, 4), float("inf"))], [torch.zeros(2, dtype=torch.long)])
    assert method.steps == 0 and run.scaler.get_scale() == 2.0
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    method.train_minibatch([torch.ones(2, 4)], [torch.zeros(2, dtype=torch.long)])
    assert method.steps == 1


def test_lookahead_pulls_slow_weights_alpha_of_the_way_every_k_steps() -> None:
    model, run, cfg = _linear_run(["--lookahead-k", "2", "--lookahead-alpha", "0.25", "--num-branches", "1"])
    method = LookaheadMethod(model, cfg, run)
    start = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    # The fast weights after two plain SGD steps from the start.
    reference = nn.Linear(4, 3)
    torch._foreach_copy_([p.detach() for p in reference.parameters()], start)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        nn.functional.cross_entropy(reference(x), y).backward()
        sgd.step()
        sgd.zero_grad()

    method.train_minibatch([x], [y])
    assert all(torch.equal(slow, origin) for slow, origin in zip(method.slow, start))
    method.train_minibatch([x], [y])  # the k-th step syncs

    for slow, origin, fast, param in zip(method.slow, start, reference.parameters(), model.parameters()):
        torch.testing.assert_close(slow, origin + 0.25 * (fast.detach() - origin))
        assert torch.equal(param.detach(), slow)  # the fast weights restart from the slow ones


def test_lookaround_averages_batchnorm_statistics_when_it_averages_the_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    cfg = parse_config(["--backend", "eager", "--bn", "average", "--average-every", "2", "--num-branches", "2",
                        "--augment", "none,none"])
    run = ForwardBackward(model, None, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"))
    method = LookaroundMethod(model, cfg, run)
    views, labels = [torch.randn(8, 4), torch.randn(8, 4) + 3], [torch.randint(0, 3, (8,))] * 2

    method.train_minibatch(views, labels)
    (mean0, var0, _), (mean1, var1, _) = method.branch_bn.state_dict()["sets"]
    assert not torch.equal(mean0, mean1)  # after one step each branch has its own statistics
    branches = [state["branch_weights"] for state in method.optimizer.state_dict()["state"].values()]
    with method.evaluation_weights():  # mid-cycle: the mean of the branches is evaluated
        for param, weights in zip(model.parameters(), branches):
            assert not torch.equal(weights[0], weights[1])
            torch.testing.assert_close(param.detach(), weights.mean(0))
        torch.testing.assert_close(model[1].running_mean, (mean0 + mean1) / 2)
    method.train_minibatch(views, labels)  # the second step averages weights and statistics
    (mean0, var0, count0), (mean1, var1, count1) = method.branch_bn.state_dict()["sets"]
    assert torch.equal(mean0, mean1) and torch.equal(var0, var1) and int(count0) == int(count1) == 2
    with method.evaluation_weights():
        assert torch.equal(model[1].running_mean, mean0)


def test_unknown_model_is_a_usage_error_and_small_images_get_the_cifar_stem() -> None:
    with pytest.raises(UsageError, match="unknown model 'lenet'"):
        build_model("lenet", 10, 32)
    resnet = build_model("resnet18", 10, 16)
    assert resnet.conv1.stride == (1, 1) and isinstance(resnet.maxpool, nn.Identity)
    assert resnet(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
