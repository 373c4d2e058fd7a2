"""One meaning per option: every place that still states an option's type, default, choices or
whether it is required must state the same.

The places, for each option of agentguard.hardening.egress_rules (and the role variable that feeds it,
as roles/egress/vars/main.yml maps them):
- the module's DOCUMENTATION (what ansible-doc shows);
- ARGUMENT_SPEC (module_utils/_policy.py: what the modules and the controller-side checks,
  _options.check_options, validate against);
- the choices the controller-side messages name (_options.validated_policy);
- the role's meta/argument_specs.yml and defaults/main.yml (tests/unit/roles/test_readme.py keeps
  these two equal to each other; here both are compared with the module).
A place that does not state an attribute is not compared for it (the module has no default
tls_gate_user; the role has one). Places that stated them before and must not again: build_policy's
fallbacks and the Kubernetes export's defaults (they take ARGUMENT_SPEC's); the role variable behind each
option is stated once in Python (_options.ROLE_VARIABLES), tested equal to the role's mapping.
"""
import ast
import copy
import inspect
import os
import re

import pytest
import yaml

from ansible_collections.agentguard.hardening.plugins.module_utils import _k8s, _options, _policy
from ansible_collections.agentguard.hardening.plugins.modules import egress_rules

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLE = os.path.join(ROOT, "roles", "egress")
ATTRIBUTES = ("type", "elements", "default", "choices", "required")
NOT_STATED = object()


def load(path):
    with open(os.path.join(ROLE, path)) as handle:
        return yaml.safe_load(handle)


def spec_attributes(spec, prefix=""):
    """{option path: {attribute: value}} of an argument spec or a documentation's options, suboptions
    as "allow.ports". Only what the place states; required false is the same as not stating it."""
    found = {}
    for name, body in spec.items():
        path = prefix + name
        found[path] = dict((attr, body[attr]) for attr in ATTRIBUTES if attr in body)
        if found[path].get("required") is False:
            del found[path]["required"]
        if body.get("options") or body.get("suboptions"):
            found.update(spec_attributes(body.get("options") or body.get("suboptions"), path + "."))
    return found


DERIVED = {"state_dir": "egress_guard"}


def role_variable_of_option():
    """{option: role variable} from the role's mapping (vars/main.yml, __egress_rules_args); options
    fed by an internal variable (dns_resolver_user) are not the user's to set and are left out, and so are
    options DERIVED from a role variable of another meaning (state_dir: the guard's state directory when
    egress_guard is on)."""
    mapping = {}
    for option, template in load(os.path.join("vars", "main.yml"))["__egress_rules_args"].items():
        if option in DERIVED:
            continue
        variables = set(re.findall(r"(?<!\w)egress_\w+", str(template)))
        assert len(variables) <= 1, (option, variables)
        if variables:
            mapping[option] = variables.pop()
    return mapping


def role_places():
    """The role's statements, keyed by the module's option paths."""
    mapping = role_variable_of_option()
    specs = spec_attributes(load(os.path.join("meta", "argument_specs.yml"))["argument_specs"]["main"]["options"])
    defaults = load(os.path.join("defaults", "main.yml"))
    argument_specs, role_defaults = {}, {}
    for option, variable in mapping.items():
        for path, attrs in specs.items():
            if path == variable or path.startswith(variable + "."):
                argument_specs[option + path[len(variable):]] = attrs
        if variable in defaults:
            role_defaults[option] = {"default": defaults[variable]}
    return argument_specs, role_defaults


def build_policy_fallbacks():
    """{option path: {"default": value}}: the literal fallbacks in _policy's source (params.get(name, X),
    params.get(name) or X; entry.get(name, X) inside an allow entry)."""
    found = {}
    tree = ast.parse(inspect.getsource(_policy))

    def fallback_of(call):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "get"
                and isinstance(call.func.value, ast.Name) and call.func.value.id in ("params", "entry")
                and call.args and isinstance(call.args[0], ast.Constant)):
            prefix = "" if call.func.value.id == "params" else "allow."
            return prefix + call.args[0].value
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) == 2:
            path = fallback_of(node)
            if path:
                found.setdefault(path, {})["default"] = ast.literal_eval(node.args[1])
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2:
            path = fallback_of(node.values[0])
            if path:
                found.setdefault(path, {})["default"] = ast.literal_eval(node.values[1])
    return found


def build_policy_choices(spec_places):
    """{option path: {"choices": [...]}}: the choices the controller-side check names when it refuses a value."""
    found = {}
    base = {"allow": [{"name": "api", "host": "198.18.0.10"}], "dns_servers": ["198.18.0.53"]}
    for path, attrs in spec_places.items():
        if "choices" not in attrs:
            continue
        params = copy.deepcopy(base)
        bogus = "not-a-choice"
        if path.startswith("allow."):
            params["allow"][0][path.split(".", 1)[1]] = bogus
            where = "allow[0]." + path.split(".", 1)[1]
        elif attrs.get("type") == "list":
            params[path], where = [bogus], path + "[0]"
        else:
            params[path], where = bogus, path
        with pytest.raises(_policy.PolicyError) as info:
            _options.validated_policy(params, lambda name: 1000)
        message = [e for e in info.value.errors if e.startswith(where + ": ")]
        assert message, (path, info.value.errors)
        match = re.search(r" is not one of (.*)$", message[0])
        assert match, message[0]
        found[path] = {"choices": match.group(1).split(", ")}
    return found


def all_places():
    argument_specs, role_defaults = role_places()
    module_spec = spec_attributes(_policy.ARGUMENT_SPEC)
    documentation = spec_attributes(yaml.safe_load(egress_rules.DOCUMENTATION)["options"])
    return {
        "egress_rules DOCUMENTATION": documentation,
        "_policy.ARGUMENT_SPEC": module_spec,
        "build_policy choices": build_policy_choices(module_spec),
        "role meta/argument_specs.yml": argument_specs,
        "role defaults/main.yml": role_defaults,
    }


def disagreements(places):
    """Lines "option attribute: place=value, place=value" wherever two places state different values."""
    options = sorted(set(path for found in places.values() for path in found))
    lines = []
    for path in options:
        for attr in ATTRIBUTES:
            stated = [(place, found[path][attr]) for place, found in sorted(places.items())
                      if attr in found.get(path, {})]
            if len(set(repr(value) for place, value in stated)) > 1:
                lines.append("%s %s: %s" % (path, attr, ", ".join("%s=%r" % pair for pair in stated)))
    return lines


def test_every_place_that_states_an_option_states_the_same():
    problems = disagreements(all_places())
    assert not problems, "\n".join(problems)


def test_the_documentation_and_the_spec_name_the_same_options():
    places = all_places()
    assert sorted(places["egress_rules DOCUMENTATION"]) == sorted(places["_policy.ARGUMENT_SPEC"])


def test_each_place_is_really_read():
    """Every place states something for the options it covers, so a parser that found nothing
    cannot make the comparison pass."""
    places = all_places()
    assert {"mode", "scope", "allow.protocol", "families", "tls_gate"} <= set(places["build_policy choices"])
    for place in ("role meta/argument_specs.yml", "role defaults/main.yml"):
        assert {"allow", "mode", "scope", "tls_gate", "tls_gate_port", "families"} <= set(places[place]), place
    assert "allow.protocol" in places["role meta/argument_specs.yml"]


@pytest.mark.parametrize("place, path, attr, value", [
    ("_policy.ARGUMENT_SPEC", "log_burst", "default", 30),
    ("egress_rules DOCUMENTATION", "scope", "choices", ["host", "users"]),
    ("build_policy choices", "dns_mode", "choices", ["pinned"]),
    ("role meta/argument_specs.yml", "deny_action", "choices", ["drop"]),
    ("role defaults/main.yml", "tls_gate_port", "default", 10444),
])
def test_one_place_that_differs_fails_the_comparison(place, path, attr, value):
    places = all_places()
    places[place][path][attr] = value
    problems = disagreements(places)
    assert len(problems) == 1 and problems[0].startswith("%s %s: " % (path, attr)), problems
    assert "%s=%r" % (place, value) in problems[0]


def test_build_policy_and_the_export_state_no_default_of_their_own():
    """build_policy and the Kubernetes export take ARGUMENT_SPEC's defaults (check_options); a literal
    fallback in _policy (params.get(name, X), params.get(name) or X, entry.get(...)) would be a second
    place that states one."""
    assert build_policy_fallbacks() == {}
    assert not hasattr(_k8s, "ROLE_VARIABLES") or _k8s.ROLE_VARIABLES is _options.ROLE_VARIABLES


def test_the_fallback_finder_finds_a_fallback(monkeypatch):
    """The check above would pass with a finder that finds nothing: it finds one in a source that has it."""
    monkeypatch.setattr(inspect, "getsource", lambda module: "x = params.get('log_burst', 20)\ny = entry.get('ports') or [443]")
    assert build_policy_fallbacks() == {"log_burst": {"default": 20}, "allow.ports": {"default": [443]}}


def test_the_role_variable_of_each_option_is_the_roles_mapping():
    """_options.ROLE_VARIABLES (the names every controller-side message uses) is the role's own mapping,
    roles/egress/vars/main.yml __egress_rules_args."""
    assert _options.ROLE_VARIABLES == role_variable_of_option()
