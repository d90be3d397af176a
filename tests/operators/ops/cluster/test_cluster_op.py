"""The ``cluster`` op: each weight takes at most 2**bits values (the optimal ones), pruned zeros
stay out of the codebook, and the Codebook constraint ties members to their centroid."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.ops.cluster.algorithm import project_cluster
from operators.ops.cluster.op import Codebook
from operators.train.finetune import finetune

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10})


def test_each_weight_is_projected_onto_its_optimal_codebook():
    torch.manual_seed(0)
    model = build_model(*MLP)
    cm = apply_strategy(model, [{"op": "cluster", "bits": 2}])
    for name in ("fc1", "fc2", "fc3"):
        w = cm.model.get_submodule(name).weight
        assert torch.equal(w, project_cluster(model.get_submodule(name).weight.detach(), 2)), name
        assert cm.report[0]["layers"][name] == {"values": 4, "clustered": w.numel()}
        assert torch.equal(cm.model.get_submodule(name).bias, model.get_submodule(name).bias)


def test_after_pruning_only_the_kept_entries_are_clustered():
    torch.manual_seed(0)
    cm = apply_strategy(
        build_model(*MLP), [{"op": "prune", "sparsity": 0.7}, {"op": "cluster", "bits": 2}]
    )
    mask = cm.masks["fc1.weight"]
    w = cm.model.fc1.weight.detach()
    assert (w[~mask] == 0).all()
    assert len(torch.unique(w[mask])) == 4 and not (w[mask] == 0).any()  # zero is no centroid
    assert cm.report[1]["layers"]["fc1"]["clustered"] == int(mask.sum())


def test_the_codebook_projects_to_cluster_means_and_sums_member_gradients():
    codebook = Codebook(torch.tensor([0, 1, 0, 2]), torch.tensor([0, 2, 3, 5]), k=3)
    values = torch.tensor([1.0, 9.0, 4.0, 3.0, 9.0, 7.0])
    codebook.project_(values)
    assert values.tolist() == [2.0, 9.0, 4.0, 2.0, 9.0, 7.0]  # only the positions move
    grad = codebook.grad(torch.tensor([[0.5, 9.0, 1.0], [0.25, 9.0, 2.0]]))
    assert grad.tolist() == [[0.75, 0.0, 1.0], [0.75, 0.0, 2.0]]  # not clustered: no gradient


def test_masked_fine_tuning_trains_the_centroids(trained_mlp, digits):
    cm = apply_strategy(trained_mlp, [{"op": "cluster", "bits": 2}])
    before = torch.unique(cm.model.fc1.weight.detach())
    assignment = [cm.model.fc1.weight.detach() == v for v in before]
    finetune(cm, digits, method="masked", epochs=0.3, batch_size=64, lr=1e-2)
    after = torch.unique(cm.model.fc1.weight.detach())
    assert len(after) == len(before) == 4 and not torch.equal(after, before)
    w = cm.model.fc1.weight.detach()
    for members in assignment:  # the assignment is held: each cluster still shares one value
        assert len(torch.unique(w[members])) == 1


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "cluster"}, "bits: required by cluster"),
        ({"op": "cluster", "bits": 9}, r"bits: must be an integer in \[1, 8\]"),
        ({"op": "cluster", "bits": 2.5}, "bits: must be an integer"),
        ({"op": "cluster", "bits": 2, "method": "lloyd"}, "method: must be one of dp, kmeans"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
