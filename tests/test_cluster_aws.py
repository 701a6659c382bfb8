"""What `ray up cluster.yaml` does on AWS, run on moto (in-process EC2 + IAM, no Ray started): the IAM
set-up as cluster/README.md writes it, then Ray's own `_bootstrap_config` (prepare, validate, the AWS
bootstrap: profiles, key pair, subnets, security group) on cluster.yaml, then a worker launched by Ray's
AWS node provider with the bootstrapped node_config. And the spot -> on-demand fallback: Ray's scheduler
with cluster/spot_first.py after a spot launch refused by EC2, through Ray's own NodeLauncher."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")
from moto import mock_aws  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
BUCKET = "salt-runs"
CONFIG = yaml.safe_load(CLUSTER.read_text())
SSH_ANYWHERE = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}


def setup_lines() -> list[list[str]]:
    """The `aws iam ...` lines of cluster/README.md's set-up block, split as the shell would."""
    text = (REPO / "cluster" / "README.md").read_text()
    block = re.search(r"```bash\n(BUCKET=.*?)```", text, re.S)
    assert block, "cluster/README.md: the IAM set-up block starting with BUCKET= is missing"
    return [shlex.split(line) for line in block[1].splitlines() if line.startswith("aws iam ")]


def run_setup(tmp_path: Path, account: str) -> None:
    """cluster/README.md's IAM commands through boto3 (`aws iam create-role --role-name X` is
    `create_role(RoleName=X)`), with its sed substitutions applied to the policy files it names."""
    iam = boto3.client("iam", region_name="us-east-1")
    filled = {}
    for name in ("head-policy.json", "worker-policy.json"):
        text = (REPO / "cluster" / name).read_text().replace("YOUR-BUCKET", BUCKET)
        filled[f"/tmp/{name}"] = text.replace("ACCOUNT-ID", account)
    lines = setup_lines()
    assert len(lines) == 9, lines
    for words in lines:
        op = words[2].replace("-", "_")
        kwargs = {}
        for flag, value in zip(words[3::2], words[4::2], strict=True):
            key = "".join(part.capitalize() for part in flag.removeprefix("--").split("-"))
            if value.startswith("file://"):
                path = value.removeprefix("file://")
                value = filled[path] if path in filled else (REPO / path).read_text()
            kwargs[key] = value
        getattr(iam, op)(**kwargs)


def allows(document: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement of an IAM policy document covers `action` on `resource`
    (IAM's `*` and `?` wildcards; no Deny or conditions in these files)."""
    for statement in document["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        ):
            return True
    return False


def role_documents(iam, role: str) -> list[dict]:
    """Every policy document the role has: inline ones, and the default version of attached ones."""
    docs = [
        iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    ]
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
        docs.append(version["PolicyVersion"]["Document"])
    return [json.loads(d) if isinstance(d, str) else d for d in docs]


@pytest.fixture
def aws(tmp_path, monkeypatch):
    """An empty moto account in us-west-2 (cluster.yaml's region); HOME in tmp_path for the key pair
    Ray's bootstrap writes to ~/.ssh."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
        "HOME": str(tmp_path),
        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",  # AmazonEC2FullAccess, which the head's role attaches
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    from ray.autoscaler._private.aws import node_provider

    def cluster_instance_types(region: str, aws_credentials=None) -> list[dict]:
        # Ray lists every instance type (19 pages, 16 s on moto); the types cluster.yaml names suffice
        # for the resources it fills out.
        names = sorted({t["node_config"]["InstanceType"] for t in CONFIG["available_node_types"].values()})
        ec2 = boto3.client("ec2", region_name=region)
        return ec2.describe_instance_types(InstanceTypes=names)["InstanceTypes"]

    monkeypatch.setattr(node_provider, "list_ec2_instances", cluster_instance_types)
    with mock_aws():
        account = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Account"]
        yield account


def bootstrap(config: dict, captured: list | None = None) -> dict:
    """Ray's own `ray up` path up to the launch: commands._bootstrap_config (prepare_config,
    validate_config, the AWS provider's bootstrap_config). `captured` gets the IpPermissions of every
    AuthorizeSecurityGroupIngress call botocore sends."""
    import botocore.client
    from ray.autoscaler._private import commands

    real = botocore.client.BaseClient._make_api_call

    def spy(self, operation, params):
        if operation == "AuthorizeSecurityGroupIngress" and captured is not None:
            captured.append(copy.deepcopy(params["IpPermissions"]))
        return real(self, operation, params)

    botocore.client.BaseClient._make_api_call = spy
    try:
        return commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    finally:
        botocore.client.BaseClient._make_api_call = real


def register_amis(config: dict) -> None:
    """moto knows only its own AMIs: register the ImageIds cluster.yaml names, so run_instances takes them."""
    ec2 = boto3.client("ec2", region_name="us-west-2")
    wanted = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    for ami in wanted:
        image = ec2.register_image(Name=f"stand-in for {ami}", RootDeviceName="/dev/sda1")["ImageId"]
        for t in config["available_node_types"].values():
            if t["node_config"]["ImageId"] == ami:
                t["node_config"]["ImageId"] = image


def test_ray_up_bootstraps_cluster_yaml_with_its_own_profiles_and_one_ssh_rule(aws, tmp_path):
    run_setup(tmp_path, aws)
    config = copy.deepcopy(CONFIG)
    sent: list = []
    resolved = bootstrap(config, sent)

    # The security group Ray created: its rules went in one call that EC2 (moto) accepted.
    assert len(sent) == 1, sent
    keys = [json.dumps(p, sort_keys=True) for p in sent[0]]
    assert len(keys) == len(set(keys)), f"a permission repeated in one authorize_ingress call: {sent[0]}"
    types = resolved["available_node_types"]
    (group_id,) = {g for t in types.values() for g in t["node_config"]["SecurityGroupIds"]}
    group = boto3.client("ec2", region_name="us-west-2").describe_security_groups(GroupIds=[group_id])
    ingress = group["SecurityGroups"][0]["IpPermissions"]
    assert sum(p.get("FromPort") == 22 for p in ingress) == 1, ingress

    # The head keeps its explicit profile (Ray made no ray-autoscaler-v1); the workers have theirs.
    iam = boto3.client("iam", region_name="us-east-1")
    head = types[resolved["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {n: t["node_config"]["IamInstanceProfile"]["Name"] for n, t in types.items() if n != "head"}
    assert head == "salt-ray-head" and set(workers.values()) == {"salt-ray-worker"}, (head, workers)
    assert not resolved["head_node"], resolved["head_node"]
    assert "ray-autoscaler-v1" not in [r["RoleName"] for r in iam.list_roles()["Roles"]]

    # The head's role may pass the worker role (what EC2 checks when the head launches a worker) and
    # no other role; the worker role reaches the run bucket only, and no EC2.
    (head_role,) = iam.get_instance_profile(InstanceProfileName=head)["InstanceProfile"]["Roles"]
    (worker_role,) = iam.get_instance_profile(InstanceProfileName="salt-ray-worker")["InstanceProfile"][
        "Roles"
    ]
    head_docs = role_documents(iam, head_role["RoleName"])
    worker_docs = role_documents(iam, worker_role["RoleName"])
    assert any(allows(d, "iam:PassRole", worker_role["Arn"]) for d in head_docs)
    assert not any(allows(d, "iam:PassRole", head_role["Arn"]) for d in head_docs)
    assert any(allows(d, "ec2:RunInstances", "*") for d in head_docs)
    assert any(allows(d, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/salt/x") for d in worker_docs)
    assert not any(allows(d, "s3:PutObject", "arn:aws:s3:::another-bucket/x") for d in worker_docs)
    assert not any(allows(d, "ec2:RunInstances", "*") or allows(d, "iam:PassRole", "*") for d in worker_docs)

    # A GPU worker launched the way the autoscaler does (Ray's AWS node provider, the bootstrapped
    # node_config) gets the worker profile, spot market and all.
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    register_amis(resolved)
    provider = AWSNodeProvider(resolved["provider"], resolved["cluster_name"])
    created = provider.create_node(types["gpu_spot"]["node_config"], {"ray-node-type": "worker"}, 1)
    (instance,) = created.values()
    instance.load()
    assert instance.iam_instance_profile["Arn"].endswith(":instance-profile/salt-ray-worker")
    assert instance.instance_lifecycle == "spot"


def test_a_repeated_ssh_rule_is_what_ec2_refuses(aws, tmp_path):
    """Why cluster.yaml gives no IpPermissions: Ray sends its own 22/tcp rule in the same call."""
    import botocore.exceptions

    run_setup(tmp_path, aws)
    config = copy.deepcopy(CONFIG)
    config["provider"]["security_group"]["IpPermissions"] = [SSH_ANYWHERE]
    sent: list = []
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidPermission.Duplicate"):
        bootstrap(config, sent)
    assert [p for p in sent[0] if p == SSH_ANYWHERE] == [SSH_ANYWHERE, SSH_ANYWHERE]


def test_a_pre_created_security_group_is_used_as_it_is(aws, tmp_path):
    """cluster/README.md's way to narrow SSH: Ray adds no rule to a group named in every node_config."""
    run_setup(tmp_path, aws)
    ec2 = boto3.client("ec2", region_name="us-west-2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="salt-mine", Description="mine", VpcId=vpc)["GroupId"]
    mine = [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]},
    ]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=mine)
    config = copy.deepcopy(CONFIG)
    for t in config["available_node_types"].values():
        t["node_config"]["SecurityGroupIds"] = [group]
    sent: list = []
    resolved = bootstrap(config, sent)
    assert sent == []
    assert {
        g for t in resolved["available_node_types"].values() for g in t["node_config"]["SecurityGroupIds"]
    } == {group}
    ingress = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    cidrs = [r["CidrIp"] for p in ingress for r in p.get("IpRanges", [])]
    assert cidrs == ["203.0.113.7/32"], ingress


def scheduler_picks(config: dict, provider, head: str, summary) -> dict:
    """The node types Ray's autoscaler v1 would launch for one 5-fold trial (5 x {GPU: 1, CPU: 4})
    on a cluster of the head alone, given the launch record `summary`, with the scorer named in the
    environment."""
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler

    scheduler = ResourceDemandScheduler(
        provider,
        config["available_node_types"],
        config["max_workers"],
        config["head_node_type"],
        config["upscaling_speed"],
    )
    to_launch, infeasible = scheduler.get_nodes_to_launch(
        [head], {}, [{"GPU": 1, "CPU": 4}] * 5, {}, [], {}, [], summary
    )
    assert infeasible == []
    return dict(to_launch)


def test_a_spot_type_that_ec2_refuses_falls_back_to_on_demand_for_30_minutes(aws, tmp_path, monkeypatch):
    """cluster/spot_first.py, loaded the way cluster.yaml's head starts Ray, in Ray's own scheduler; the
    failed launch goes through Ray's NodeLauncher and AWS node provider (EC2 refusing spot capacity)."""
    import time

    import botocore.client
    import botocore.exceptions
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.constants import AUTOSCALER_UTILIZATION_SCORER_KEY
    from ray.autoscaler._private.event_summarizer import EventSummarizer
    from ray.autoscaler._private.node_launcher import BaseNodeLauncher
    from ray.autoscaler._private.node_provider_availability_tracker import NodeProviderAvailabilityTracker
    from ray.autoscaler._private.util import ConcurrentCounter
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    (start,) = [c for c in CONFIG["head_start_ray_commands"] if "ray start --head" in c]
    scorer = re.search(rf"{AUTOSCALER_UTILIZATION_SCORER_KEY}=(\S+)", start)
    assert scorer and "PYTHONPATH=$HOME/salt-orchestrator" in start, start
    run_setup(tmp_path, aws)
    config = bootstrap(copy.deepcopy(CONFIG))
    register_amis(config)

    real = botocore.client.BaseClient._make_api_call

    def no_spot_capacity(self, operation, params):
        if operation == "RunInstances" and "InstanceMarketOptions" in params:
            error = {"Code": "InsufficientInstanceCapacity", "Message": "no spot g5.xlarge capacity"}
            raise botocore.exceptions.ClientError({"Error": error}, operation)
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", no_spot_capacity)
    clock = [0.0]
    tracker = NodeProviderAvailabilityTracker(timer=lambda: time.time() + clock[0])
    pending = ConcurrentCounter()
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    head_tags = {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: config["head_node_type"]}
    (head,) = provider.create_node(config["available_node_types"]["head"]["node_config"], head_tags, 1)
    assert provider.non_terminated_nodes({}) == [head]  # as every autoscaler update starts (fills tags)
    launcher = BaseNodeLauncher(
        provider,
        pending,
        EventSummarizer(),
        tracker,
        node_types=config["available_node_types"],
    )

    # Ray's default scorer: spot first (the names tie-break it), and spot again after the refusal.
    monkeypatch.delenv(AUTOSCALER_UTILIZATION_SCORER_KEY, raising=False)
    assert scheduler_picks(config, provider, head, tracker.summary()) == {"gpu_spot": 5}
    pending.inc("gpu_spot", 5)
    assert launcher.launch_node(config, 5, "gpu_spot") == {}  # every subnet refused: recorded, no node
    assert not tracker.summary().node_availabilities["gpu_spot"].is_available
    assert scheduler_picks(config, provider, head, tracker.summary()) == {"gpu_spot": 5}

    # cluster.yaml's scorer: on-demand while the refusal is fresh, which launches; spot after 30 minutes.
    monkeypatch.setenv(AUTOSCALER_UTILIZATION_SCORER_KEY, scorer[1])
    assert scheduler_picks(config, provider, head, tracker.summary()) == {"gpu_ondemand": 5}
    pending.inc("gpu_ondemand", 5)
    assert launcher.launch_node(config, 5, "gpu_ondemand")  # moto starts MinCount=1 of them
    assert tracker.summary().node_availabilities["gpu_ondemand"].is_available
    assert scheduler_picks(config, provider, head, tracker.summary()) == {"gpu_ondemand": 5}
    clock[0] = 31 * 60
    assert scheduler_picks(config, provider, head, tracker.summary()) == {"gpu_spot": 5}


def test_the_heads_monitor_can_load_the_scorer_from_the_project_folder(tmp_path):
    """What the head's monitor does with cluster.yaml's start line: Ray's loader imports the scorer by
    the name given, with only the project folder on PYTHONPATH (outside the folder, no editable install
    of it needed)."""
    import os
    import subprocess
    import sys

    (start,) = [c for c in CONFIG["head_start_ray_commands"] if "ray start --head" in c]
    path = re.search(r"RAY_AUTOSCALER_UTILIZATION_SCORER=(\S+)", start)[1]
    code = (
        "from ray.autoscaler._private.loader import load_function_or_class as load; "
        f"f = load({path!r}); print(f.__module__, f.__code__.co_filename)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cluster.spot_first", str(REPO / "cluster" / "spot_first.py")]
