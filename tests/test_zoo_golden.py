"""Real public Caffe nets against BVLC Caffe: every golden blob of ``../shared/golden/zoo``.

Each case is the zoo folder's recipe (its README): the published prototxt,
edited as cases.json says, seeded weights and inputs, one forward (and, for
TRAIN cases, one backward). Every key of Caffe's npz -- each blob's data,
each param, each nonzero diff and param diff -- must be within relative 1e-4
as ``make_case.compare`` measures it. The only keys held looser are those
cases.json itself lists (MAX-pool ties: the diffs upstream of ``tie_pools``
at ``tol_bwd``), found with ``make_case.upstream_of``.

The weight-heavy nets (hundreds of MB of weights) carry the ``slow`` marker:
``python -m pytest -m "not slow"`` leaves them out; the default run keeps them.
"""
import numpy as np
import pytest

import zoo_cases

if not zoo_cases.available():
    pytest.skip("zoo golden files from BVLC Caffe not found at %s (they live beside the checkout "
                "in ../shared/golden/zoo); nothing to compare against" % zoo_cases.ZOO,
                allow_module_level=True)

CASES = zoo_cases.load_cases()
SLOW = {"bvlc_alexnet", "bvlc_alexnet_train", "fcn32s_voc_train", "fcn_alexnet_voc_train", "vgg16"}


def _params():
    return [pytest.param(i, marks=pytest.mark.slow) if i in SLOW else i for i in CASES]


def _report(bad, total):
    bad = sorted(bad, key=lambda r: -r[1] / r[2])
    lines = ["%s: rel err %.3g > %.3g" % r for r in bad[:15]]
    more = len(bad) - 15
    return "%d of %d golden keys differ from Caffe's:\n  %s%s" % (
        len(bad), total, "\n  ".join(lines), "\n  ... and %d more" % more if more > 0 else "")


@pytest.mark.parametrize("case_id", _params())
def test_zoo_net_matches_caffe(case_id):
    case = CASES[case_id]
    net = zoo_cases.load_net(case_id)
    zoo_cases.run(net, case)
    with zoo_cases.golden(case_id) as g:
        results = zoo_cases.compare(net, case, g)
    assert results, "the golden npz of %s holds no keys" % case_id
    bad = zoo_cases.failures(results)
    assert not bad, _report(bad, len(results))


def test_exceptions_cover_only_backward_keys_of_the_listed_cases():
    """The looser tolerance applies to diffs upstream of listed pools, never to forward data."""
    for case_id in ("bvlc_googlenet_train", "cifar10_quick_train"):
        case = CASES[case_id]
        net = zoo_cases.load_net(case_id)
        tol = zoo_cases.tolerances(net, case)
        if not case.get("tie_pools"):
            assert tol == {}
            continue
        assert tol, "%s lists tie_pools but no key is upstream of them" % case_id
        assert all(k.startswith(("diff/", "pdiff/")) for k in tol)
        assert set(tol.values()) == {float(case["tol_bwd"])}
        # The loss and the last classifier are downstream of every pool: held to 1e-4.
        assert "pdiff/loss3/classifier/0" not in tol and "diff/loss3/classifier" not in tol


def test_a_wrong_blob_is_caught():
    """The comparison itself fails on a perturbed blob (so a green run means something)."""
    case = CASES["cifar10_quick_train"]
    net = zoo_cases.load_net("cifar10_quick_train")
    zoo_cases.run(net, case)
    net.blobs["conv2"].data *= np.float32(1.001)   # 1e-3 relative: ten times the tolerance
    with zoo_cases.golden("cifar10_quick_train") as g:
        results = zoo_cases.compare(net, case, g, keys=["data/conv2", "data/conv1"])
    assert [r[0] for r in zoo_cases.failures(results)] == ["data/conv2"]
