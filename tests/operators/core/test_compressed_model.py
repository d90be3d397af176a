"""The compressed-model state: enforce projects in place (masked entries to +0.0, values to
their storage dtype, constraints), project gives a projected copy."""

import torch

from operators.core.model import CompressedModel, Constraint
from operators.core.strategy import apply_strategy


def test_enforce_writes_positive_zeros(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}])
    with torch.no_grad():
        cm.model.fc1.weight.fill_(-1.0)
    cm.enforce()
    pruned = cm.model.fc1.weight[~cm.masks["fc1.weight"]]
    assert pruned.numel() > 0 and (pruned.view(torch.int32) == 0).all()  # +0.0, not -0.0
    assert (cm.model.fc1.weight[cm.masks["fc1.weight"]] == -1.0).all()


def test_project_returns_a_projected_copy_and_leaves_the_parameter(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}, {"op": "quantize"}])
    with torch.no_grad():
        cm.model.fc1.weight.add_(1e-4)  # as if an optimizer step ran
    moved = cm.model.fc1.weight.detach().clone()
    projected = cm.project("fc1.weight", cm.model.fc1.weight)
    assert torch.equal(cm.model.fc1.weight, moved)
    assert torch.equal(projected, (moved * cm.masks["fc1.weight"]).half().float())
    assert cm.storage_dtype("fc1.weight") == torch.float16
    cm.enforce()
    assert torch.equal(cm.model.fc1.weight, projected)


class Rounded(Constraint):
    def project_(self, tensor):
        tensor.copy_(torch.round(tensor))


def test_a_constraint_runs_before_the_mask_and_the_dtype():
    model = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.4, 1.6, -2.7], [1000.5, 0.2, 3.3]]))
    cm = CompressedModel(
        model,
        masks={"weight": torch.tensor([[True, True, False], [True, True, True]])},
        value_dtypes={"weight": torch.bfloat16},
        constraints={"weight": Rounded()},
    )
    cm.enforce()
    assert cm.model.weight.tolist() == [[0.0, 2.0, 0.0], [1000.0, 0.0, 3.0]]  # 1000 in bf16
    assert cm.storage_dtype("bias") == torch.float32 and cm.input_shape is None
