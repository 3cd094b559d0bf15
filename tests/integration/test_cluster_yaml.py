"""``cluster.yaml`` is a valid Ray cluster-launcher config, holds no secret, installs pinned.

Offline: no Ray is started and no cloud is called. What works with the installed Ray (2.60):

1. ``jsonschema.validate(raw, ray/autoscaler/ray-schema.json)`` on the file as written: the
   schema Ray's own launcher uses (it does not check ``provider`` or ``node_config`` keys).
2. ``prepare_config(raw)`` (fills in the AWS defaults, merges ``setup_commands`` into the
   head/worker lists, sets per-type ``min/max_workers``), then ``validate_config(prepared)``:
   what ``ray up`` does before it touches AWS.

Calling ``validate_config`` on the *raw* file instead fails with a misleading
``RuntimeError: Missing 'cluster_synced_files' ... the Ray version running in the cluster
2.60.0 is greater than the Ray version running on your laptop``: that field is only filled in
by ``prepare_config``; nothing is wrong with the versions.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
# EC2 RunInstances parameters a node_config may use (Ray passes node_config to boto3 as is,
# and its schema does not look inside): a typo here would only show at `ray up`.
EC2_NODE_CONFIG_KEYS = {
    "InstanceType", "ImageId", "BlockDeviceMappings", "IamInstanceProfile", "InstanceMarketOptions",
    "KeyName", "SecurityGroupIds", "SubnetIds", "SubnetId", "TagSpecifications", "UserData",
    "NetworkInterfaces", "Placement", "MetadataOptions", "CapacityReservationSpecification",
    "LaunchTemplate", "EbsOptimized", "Monitoring",
}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_cluster_yaml_passes_rays_schema(raw):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert schema_path.is_file(), schema_path
    jsonschema.validate(raw, json.loads(schema_path.read_text()))


def test_cluster_yaml_passes_prepare_and_validate_config(prepared):
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
    assert workers, "no worker node type"
    for name, node in [(prepared["head_node_type"], head), *workers.items()]:
        assert set(node["node_config"]) <= EC2_NODE_CONFIG_KEYS, (name, set(node["node_config"]))
        assert node["node_config"].get("ImageId"), f"{name}: no ImageId (Ray's default AMI is Ubuntu 18.04)"
    # CPU head, autoscaling GPU workers.
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), head["node_config"]
    for name, node in workers.items():
        assert node["node_config"]["InstanceType"].split(".")[0] in ("g4dn", "g5", "g6", "g6e", "p4d", "p5"), name
        assert node["min_workers"] == 0 and 0 < node["max_workers"] <= prepared["max_workers"], name


def _commands(config: dict) -> list[str]:
    cmds = [c for key in COMMAND_LISTS for c in config.get(key) or []]
    for node in config["available_node_types"].values():
        cmds += [c for key in COMMAND_LISTS for c in node.get(key) or []]
    return cmds


def test_setup_commands_install_with_the_constraints_file(raw, prepared):
    for config in (raw, prepared):  # prepared: setup_commands merged into head/worker lists
        installs = [c for c in _commands(config) if re.search(r"\bpip3? install\b", c)]
        assert any("-e ." in c or "vldistill" in c for c in installs), installs
        for cmd in installs:
            if re.search(r"install\s+(-q\s+)?-U\s+pip$", cmd.strip()):
                continue  # upgrading pip itself
            assert re.search(r"(-c|--constraint)\s+\S*constraints\.txt", cmd), cmd
    # The files pip needs are copied to the nodes.
    mounted = {Path(local).name for local in raw["file_mounts"].values()}
    assert {"vldistill", "pyproject.toml", "constraints.txt", "README.md"} <= mounted, mounted


def test_ray_runs_with_token_auth_on_every_node(raw):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in raw[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), (key, start)
    # The token is shipped by path, from where `ray get-auth-token --generate` writes it.
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


SECRET_KEYS = re.compile(r"(aws_)?(secret_access_key|access_key_id|session_token)|password|"
                         r"api_key|private_key|wandb_api_key|ray_auth_token\b", re.I)
SECRET_VALUES = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                      # AWS access key ids
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),  # AWS secret-key shape
    re.compile(r"\b[0-9a-f]{64}\b"),                                  # a Ray auth token (64 hex)
    re.compile(r"\b[0-9a-f]{40}\b"),                                  # a W&B API key
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(ghp|gho|github_pat|hf|sk)_[A-Za-z0-9_]{20,}"),    # GitHub / HF / OpenAI tokens
]


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k)
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, str(node)


def test_cluster_yaml_holds_no_credentials(raw):
    text = CLUSTER_YAML.read_text()
    for where, value in _walk(raw):
        assert not SECRET_KEYS.search(value), f"secret-looking key or value at {where}: {value!r}"
    for pattern in SECRET_VALUES:
        hit = pattern.search(text)
        assert hit is None, f"secret-looking text in cluster.yaml: {hit.group(0)!r}"
    assert "ssh_private_key" not in raw.get("auth", {}), "let Ray create the cluster's key pair"
    assert not re.search(r"RAY_AUTH_TOKEN=\S", text), "the token travels as a file, never inline"


def test_no_ports_opened_beyond_rays_defaults(raw):
    """Ray's own security group only: all traffic between the cluster's nodes, plus SSH for
    the launcher. No extra inbound rule, no world-open CIDR, no firewall opened by a command."""
    assert not raw["provider"].get("security_group", {}).get("IpPermissions"), raw["provider"]
    assert "0.0.0.0/0" not in CLUSTER_YAML.read_text()
    for cmd in _commands(raw):
        assert not re.search(r"\b(ufw|iptables|authorize-security-group-ingress)\b", cmd), cmd
