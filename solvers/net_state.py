"""NetState rules: which layers of a NetParameter take part in a given net.

One prototxt usually describes the train and the test net together; each
layer's ``include``/``exclude`` rules (phase, level range, stages) decide
where it belongs. This is Caffe's ``Net::FilterNet`` and
``Net::StateMeetsRule``, rule for rule.
"""
import logging

from netspec import caffe_pb2
from netspec.errors import NetError

log = logging.getLogger(__name__)


def _phase_name(phase):
    return caffe_pb2.Phase.Name(phase)


def state_meets_rule(state, rule, layer_name=""):
    """True when NetState ``state`` satisfies every condition of NetStateRule ``rule``.

    A rule is met only if all its parts hold: the phase (if given) equals the
    state's, the state's level lies in [min_level, max_level] (bounds only where
    given), the state holds every ``stage`` and none of the ``not_stage``.
    """
    if rule.HasField("phase") and rule.phase != state.phase:
        log.info("The NetState phase (%s) differed from the phase (%s) specified by a rule in layer %s",
                 _phase_name(state.phase), _phase_name(rule.phase), layer_name)
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        log.info("The NetState level (%d) is below the min_level (%d) specified by a rule in layer %s",
                 state.level, rule.min_level, layer_name)
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        log.info("The NetState level (%d) is above the max_level (%d) specified by a rule in layer %s",
                 state.level, rule.max_level, layer_name)
        return False
    stages = set(state.stage)
    for stage in rule.stage:
        if stage not in stages:
            log.info("The NetState did not contain stage '%s' specified by a rule in layer %s",
                     stage, layer_name)
            return False
    for stage in rule.not_stage:
        if stage in stages:
            log.info("The NetState contained a not_stage '%s' specified by a rule in layer %s",
                     stage, layer_name)
            return False
    return True


def layer_included(state, layer_param):
    """Caffe's inclusion test for one layer.

    No ``include`` rules: the layer is in unless an ``exclude`` rule is met.
    With ``include`` rules: the layer is in only if one of them is met.
    Giving both kinds is an error, as in Caffe.
    """
    if len(layer_param.include) and len(layer_param.exclude):
        raise NetError("layer %r: specify either include rules or exclude rules, not both"
                       % layer_param.name)
    if len(layer_param.include) == 0:
        return not any(state_meets_rule(state, rule, layer_param.name) for rule in layer_param.exclude)
    return any(state_meets_rule(state, rule, layer_param.name) for rule in layer_param.include)


def filter_net(net_param):
    """A copy of ``net_param`` holding only the layers its ``state`` includes."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net_param)
    del filtered.layer[:]
    for layer_param in net_param.layer:
        if layer_included(net_param.state, layer_param):
            filtered.layer.add().CopyFrom(layer_param)
    return filtered
