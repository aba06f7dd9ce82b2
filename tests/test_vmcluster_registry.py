"""One project image in the deployment's registry, pinned by digest, pulled by each experiment's VM identity.

Against stand-ins as strict as Azure: the local ARM server holds the Function App to the roles the Bicep
declares (tests/rbac.py: a constrained delegation of AcrPull on the registry, roles-registry.bicep); the
registry stand-in plays ACR's token exchange and refuses a pull by an identity without AcrPull or of a digest
never pushed (tests/registry_standin.py); the VM stand-in runs the boot script's ``boot.py --registry-login``
and ``docker login``/``docker pull`` against it (tests/vm_standin_host.py).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from shared.backends.arm import RetrySettings
from shared.backends.vmcluster.bootscript import docker_command, render_cloud_init
from shared.backends.vmcluster.identity import (
    ACR_PULL,
    assign_role,
    container_scope,
    ensure_identity,
    make_authorization_client,
    make_msi_client,
)
from shared.backends.vmcluster.image import ImageChoice, registry_of, repository_of, resolve_image
from shared.backends.vmcluster.settings import CLUSTER_PIP_PACKAGES, pip_env
from shared.config import AzureSettings
from shared.errors import BackendError
from shared.spec import load_spec
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.control_plane import tiny_spec
from tests.entra_standin import ImdsServer, self_signed
from tests.rbac import function_app_rbac, registry_id
from tests.registry_standin import RegistryStandIn
from tests.vm_standin import Refused, VMStandIn

SUB = "00000000-0000-0000-0000-000000000004"
RG, CONTROL_RG = "rg-registry", "rg-control"
ACCOUNT = f"/subscriptions/{SUB}/resourceGroups/{CONTROL_RG}/providers/Microsoft.Storage/storageAccounts/strhpostandin"
REGISTRY_ID = registry_id(SUB, CONTROL_RG)
ACR_PUSH = "8311e382-0749-4cb8-b61a-304f252e45ec"
NO_RETRY = RetrySettings(attempts=1, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)
DIGEST = "sha256:" + "ab" * 32


@dataclasses.dataclass
class Azure:
    arm: FakeArm
    registry: RegistryStandIn
    imds: ImdsServer
    vms: VMStandIn
    attached: dict[str, list[str]]
    cert: Path


@pytest.fixture
def azure() -> Iterator[Azure]:
    folder = Path(tempfile.mkdtemp(prefix="registry-standin-"))
    cert, key = self_signed(folder)
    attached: dict[str, list[str]] = {}
    with FakeArm(rbac=function_app_rbac(SUB, RG, CONTROL_RG)) as arm:
        registry = RegistryStandIn(arm.directory, registry_id=REGISTRY_ID, cert=cert, key=key)
        imds = ImdsServer(arm.directory, lambda vm: attached.get(vm, []))
        vms = VMStandIn(Path(sys.executable))  # only cloud-init and docker are played here: no container starts
        vms.platform = lambda vm: {
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.authority(vm),
            "SSL_CERT_FILE": str(cert),
            "REQUESTS_CA_BUNDLE": str(cert),
        }
        try:
            yield Azure(arm, registry, imds, vms, attached, cert)
        finally:
            vms.close()
            imds.close()
            registry.close()


def _clients(arm: FakeArm) -> tuple[Any, Any]:
    credential = StaticTokenCredential(arm.token)
    return make_msi_client(SUB, credential, arm.base_url), make_authorization_client(SUB, credential, arm.base_url)


def _identity(arm: FakeArm, *, acr_pull: bool) -> Any:
    experiment = f"exp-{uuid.uuid4().hex[:6]}"
    return ensure_identity(
        *_clients(arm),
        resource_group=RG,
        location="westeurope",
        experiment_id=experiment,
        tags={},
        scope=container_scope(ACCOUNT, f"run-{experiment}"),
        retry=NO_RETRY,
        registry_scope=REGISTRY_ID if acr_pull else "",
    )


def _boot(azure: Azure, vm: str, image: str, client_id: str = "") -> Any:
    """Boot stand-in VM ``vm`` from the boot script the backend renders for ``image``: signed in as
    ``client_id`` to the registry stand-in when given, with the packages the image needs installed at start."""
    notes = Path(tempfile.mkdtemp(prefix="area-"))
    registry = azure.registry.login_server if client_id else ""
    node: dict[str, Any] = {
        "role": "head",
        "vm": vm,
        "credential": {"kind": "folder", "url": str(notes)},  # where a never-started note lands
    }
    if registry:
        node["registry"] = {"server": registry, "client_id": client_id}
    env = pip_env(ImageChoice(image, "deployment" if registry else "spec", registry))
    argv = docker_command(docker_image=image, docker_args="--shm-size=1g", gpus=False, env=env)
    cloud_init = render_cloud_init(
        node=node, image=image, docker_argv=argv, install_docker=False, registry_login=bool(registry)
    )
    return azure.vms.container_for(vm, cloud_init)


def test_a_vm_whose_identity_holds_no_acrpull_pulls_nothing(azure: Azure) -> None:
    digest = azure.registry.push("rapids-hpo", "26.10")
    identity = _identity(azure.arm, acr_pull=False)
    assert identity.registry_assignment_id is None
    azure.attached["vm-a"] = [identity.resource_id]

    with pytest.raises(Refused, match="runcmd started no container"):  # signed in, but ACR grants no pull
        _boot(azure, "vm-a", f"{azure.registry.login_server}/rapids-hpo@{digest}", identity.client_id)
    # four tries with pauses, then docker run pulls once more itself (as Docker does for a missing image)
    assert azure.vms.pulls("vm-a") == 5 and azure.vms.sleeps("vm-a") == [15.0, 60.0, 180.0, 300.0]
    assert any("no AcrPull" in why for why in azure.registry.refused) and not azure.registry.pulled
    assert azure.registry.refresh_tokens  # the sign-in itself worked: ACR checks the role at the pull


def test_a_vm_whose_identity_holds_acrpull_pulls_the_pushed_digest_and_no_other(azure: Azure) -> None:
    digest = azure.registry.push("rapids-hpo", "26.10")
    identity = _identity(azure.arm, acr_pull=True)
    azure.attached["vm-b"] = [identity.resource_id]
    container = _boot(azure, "vm-b", f"{azure.registry.login_server}/rapids-hpo@{digest}", identity.client_id)
    assert container.command[-1].endswith("/opt/rapids-hpo/boot.py") and azure.vms.pulls("vm-b") == 1
    assert azure.registry.pulled == [f"rapids-hpo@{digest}"]
    login = (container.cwd / "docker-config.json").read_text()
    assert "00000000-0000-0000-0000-000000000000" in login  # the refresh token is the password, on stdin only
    assert "Login Succeeded" in (container.cwd / "runcmd.log").read_text()

    azure.attached["vm-c"] = [identity.resource_id]
    with pytest.raises(Refused):  # the right identity and role, a digest the build never produced
        _boot(azure, "vm-c", f"{azure.registry.login_server}/rapids-hpo@{DIGEST}", identity.client_id)
    assert any(why.startswith("MANIFEST_UNKNOWN") for why in azure.registry.refused)


def test_the_project_image_starts_with_no_install_and_the_stock_image_installs_at_every_start(azure: Azure) -> None:
    """The VM stand-in plays the RAPIDS entrypoint's ``EXTRA_PIP_PACKAGES`` install at every container start:
    a project-image container has nothing to install; a stock one installs the cluster's packages."""
    digest = azure.registry.push("rapids-hpo", "26.10")
    identity = _identity(azure.arm, acr_pull=True)
    azure.attached["vm-p"] = [identity.resource_id]
    project = _boot(azure, "vm-p", f"{azure.registry.login_server}/rapids-hpo@{digest}", identity.client_id)
    assert project.extra_pip == [] and "EXTRA_PIP_PACKAGES" not in project.env
    stock = _boot(azure, "vm-s", f"rapidsai/base:26.10-cuda12-py3.12@{DIGEST}")
    assert stock.extra_pip == list(CLUSTER_PIP_PACKAGES) and azure.vms.pulls("vm-s") == 1


def test_a_vm_without_the_identity_attached_gets_no_token_and_pulls_nothing(azure: Azure) -> None:
    digest = azure.registry.push("rapids-hpo", "26.10")
    identity = _identity(azure.arm, acr_pull=True)
    azure.attached["vm-x"] = []  # the experiment's identity is on no VM of this name
    with pytest.raises(Refused):
        _boot(azure, "vm-x", f"{azure.registry.login_server}/rapids-hpo@{digest}", identity.client_id)
    assert not azure.registry.pulled and not azure.registry.refresh_tokens


def test_the_function_app_may_assign_acrpull_on_the_registry_and_nothing_else(azure: Azure) -> None:
    """The constrained delegation of roles-registry.bicep: AcrPull, to service principals, on the registry."""
    identity = _identity(azure.arm, acr_pull=True)
    [pull] = [a for a in azure.arm.directory.assignments.values() if a.scope == REGISTRY_ID]
    assert pull.role_id == ACR_PULL and pull.principal_id == identity.principal_id
    authorization = _clients(azure.arm)[1]
    for role, scope in ((ACR_PUSH, REGISTRY_ID), (ACR_PULL, ACCOUNT)):
        with pytest.raises(BackendError, match="403"):
            assign_role(
                authorization,
                scope=scope,
                principal_id=identity.principal_id,
                role=role,
                what=role,
                description="test",
                retry=NO_RETRY,
            )

    # A deployment whose Bicep grants no registry delegation (deployImageRegistry=false): ARM refuses the AcrPull.
    azure.arm.rbac = function_app_rbac(SUB, RG, CONTROL_RG, deploy_image_registry=False)
    assert not [a for a in azure.arm.rbac.assignments if a.declared_in.startswith("roles-registry.bicep")]
    with pytest.raises(BackendError, match=r"AcrPull .* 403 AuthorizationFailed"):
        _identity(azure.arm, acr_pull=True)


def test_teardown_deletes_the_acrpull_with_the_identity(azure: Azure) -> None:
    from shared.backends.vmcluster.identity import delete_identity, sweep_identities
    from shared.backends.vmcluster.settings import cluster_tags

    identity = _identity(azure.arm, acr_pull=True)
    delete_identity(*_clients(azure.arm), identity, resource_group=RG, retry=NO_RETRY)
    assert not azure.arm.directory.assignments and not azure.arm.of_type("userAssignedIdentities")
    with pytest.raises(HttpResponseError):  # gone in ARM, as it would be
        _clients(azure.arm)[1].role_assignments.get_by_id(identity.registry_assignment_id)

    left = ensure_identity(  # a teardown that never ran: the timer's sweep deletes both assignments
        *_clients(azure.arm),
        resource_group=RG,
        location="westeurope",
        experiment_id="exp-gone",
        tags=cluster_tags("exp-gone", "inst"),
        scope=container_scope(ACCOUNT, "run-gone"),
        retry=NO_RETRY,
        registry_scope=REGISTRY_ID,
    )
    deleted = sweep_identities(
        *_clients(azure.arm),
        resource_group=RG,
        storage_account_id=ACCOUNT,
        live_experiment_ids=set(),
        instance_id="inst",
        retry=NO_RETRY,
        registry_id=REGISTRY_ID,
    )
    assert set(deleted) == {left.role_assignment_id, left.registry_assignment_id, left.resource_id}
    assert not azure.arm.directory.assignments


# ---------------------------------------------------------------------------------- which image, and why
def _compute(**compute: Any) -> Any:
    document = tiny_spec()
    document["compute"] = {"backend": "vmcluster", "location": "westeurope", "resource_group": RG, **compute}
    return load_spec(document).compute


SERVER = "crimgrhpo.azurecr.io"
PINNED = f"{SERVER}/rapids-hpo@{DIGEST}"
DEPLOYMENT = AzureSettings(registry=SERVER, registry_id=REGISTRY_ID, image=PINNED)


def test_the_deployments_pinned_image_is_the_default_and_a_spec_may_name_another() -> None:
    choice = resolve_image(_compute(), DEPLOYMENT)
    assert (choice.reference, choice.source, choice.registry, choice.pinned) == (PINNED, "deployment", SERVER, True)
    assert "by digest" in choice.describe() and "AcrPull" in choice.describe()
    stock = resolve_image(_compute(docker_image="rapidsai/base:26.10-cuda12-py3.12"), DEPLOYMENT)
    assert (stock.source, stock.registry, stock.pinned) == ("spec", "", False)
    assert "docker.io, pulled anonymously" in stock.describe() and "by tag" in stock.describe()
    bare = resolve_image(_compute(), AzureSettings())
    assert bare.source == "default" and bare.reference.startswith("rapidsai/base:")
    assert (registry_of(PINNED), repository_of(PINNED)) == (SERVER, "rapids-hpo")
    assert (registry_of("rapidsai/base:1"), repository_of("rapidsai/base:1")) == ("docker.io", "rapidsai/base")
    assert repository_of("127.0.0.1:5000/team/img:2") == "team/img"


@pytest.mark.parametrize(
    ("compute", "azure", "refused"),
    [
        ({}, DEPLOYMENT, None),  # the deployment's image, by digest
        ({"docker_image": f"{SERVER}/rapids-hpo:26.10"}, DEPLOYMENT, "named by tag"),
        ({"docker_image": "rapidsai/base:26.10-cuda12-py3.12"}, DEPLOYMENT, "named by tag"),
        ({"docker_image": f"rapidsai/base:26.10-cuda12-py3.12@{DIGEST}"}, DEPLOYMENT, None),  # stock, pinned
        ({}, dataclasses.replace(DEPLOYMENT, image=""), "names no project image"),
        ({"docker_image": "rapidsai/base:26.10-cuda12-py3.12"}, AzureSettings(), None),  # no registry: as before
    ],
)
def test_a_hosted_deployment_with_a_registry_runs_images_pinned_by_digest_only(
    compute: dict[str, Any], azure: AzureSettings, refused: str | None
) -> None:
    problems = _compute(**compute).image_problems(azure)
    if refused is None:
        assert problems == []
    else:
        [(path, why)] = problems
        assert path == ("compute", "docker_image") and refused in why and "@sha256:" in why


def test_the_plan_says_which_image_from_where_and_why() -> None:
    from shared.backends.vmcluster.dryrun import plan

    spec = load_spec(
        {**tiny_spec(), "compute": {"backend": "vmcluster", "location": "westeurope", "resource_group": RG}}
    )
    image = plan(spec, azure=DEPLOYMENT)["cluster"]["image"]
    assert image["reference"] == PINNED and image["pinned_by_digest"] and image["registry"] == SERVER
    assert image["pulled_as"] == "the experiment's VM identity (AcrPull)"
    assert plan(spec, azure=DEPLOYMENT)["cluster"]["kwargs"]["docker_image"] == PINNED


@pytest.mark.azurite
def test_provision_fixes_the_image_and_assigns_acrpull_the_head_signs_in_and_teardown_removes_it(
    tmp_path: Path, azure: Azure, azure_store: Any
) -> None:
    """The backend end to end against ARM (no VM boots): the run's image is fixed at provision, the
    experiment's identity gets AcrPull on the deployment's registry, every VM's boot script signs in as
    that identity before pulling the digest, and teardown deletes the assignment with the identity."""
    import base64

    import yaml

    from shared.backends.vmcluster import VMClusterBackend, VMClusterHandle
    from shared.backends.vmcluster.network import make_network_client
    from shared.backends.vmcluster.vm_teardown import make_compute_client
    from shared.records import ExperimentRecord
    from tests.control_plane import local_context

    ctx = local_context(tmp_path / "control-plane")
    deployment = dataclasses.replace(DEPLOYMENT, storage_account_id=ACCOUNT, subscription_id=SUB)
    settings = dataclasses.replace(ctx.settings, azure=deployment)
    credential = StaticTokenCredential(azure.arm.token)
    backend = VMClusterBackend(
        azure_store,
        settings,
        compute_client_factory=lambda sub: make_compute_client(sub, credential, azure.arm.base_url, polling_interval=0),
        network_client_factory=lambda sub: make_network_client(sub, credential, azure.arm.base_url, polling_interval=0),
        msi_client_factory=lambda sub: make_msi_client(sub, credential, azure.arm.base_url),
        authorization_client_factory=lambda sub: make_authorization_client(sub, credential, azure.arm.base_url),
        retry=NO_RETRY,
    )
    document = tiny_spec()
    document["compute"] = {
        "backend": "vmcluster",
        "location": "westeurope",
        "resource_group": RG,
        "subscription_id": SUB,
    }
    spec = load_spec(document).to_document()
    record = azure_store.create_experiment(
        ExperimentRecord(id=f"exp-{uuid.uuid4().hex[:8]}", name="image", spec=spec, backend="vmcluster")
    )

    def apply(update: dict[str, Any]) -> ExperimentRecord:
        return record.model_copy(update={"backend_state": {**record.backend_state, **update}})

    record = apply(backend.provision(record))
    handle = VMClusterHandle.of(record.backend_state)
    assert (handle.image, handle.image_registry) == (PINNED, SERVER)
    assert handle.identity is not None and handle.identity.registry_assignment_id
    [pull] = [a for a in azure.arm.directory.assignments.values() if a.scope == REGISTRY_ID]
    assert pull.principal_id == handle.identity.principal_id and pull.role_id == ACR_PULL

    record = apply(backend.submit(record))
    [head] = azure.arm.calls("PUT", "virtualMachines/")
    cloud_init = yaml.safe_load(base64.b64decode(head.body["properties"]["osProfile"]["customData"]))
    node = yaml.safe_load(next(f["content"] for f in cloud_init["write_files"] if f["path"].endswith("node.json")))
    assert node["registry"] == {"server": SERVER, "client_id": handle.identity.client_id}
    pull_line = cloud_init["runcmd"][1]
    assert "python3 /opt/rapids-hpo/boot.py --registry-login && docker pull" in pull_line and PINNED in pull_line
    assert handle.identity.resource_id in head.body["identity"]["userAssignedIdentities"]
    assert "EXTRA_PIP_PACKAGES" not in cloud_init["runcmd"][-1]  # the project image carries the packages

    backend.teardown(record)
    assert not azure.arm.directory.assignments and not azure.arm.of_type("userAssignedIdentities")

    # The stock image, even by digest, gets the cluster's packages at every container start.
    document["compute"]["docker_image"] = f"rapidsai/base:26.10-cuda12-py3.12@{DIGEST}"
    stock = azure_store.create_experiment(
        ExperimentRecord(
            id=f"exp-{uuid.uuid4().hex[:8]}", name="stock", spec=load_spec(document).to_document(), backend="vmcluster"
        )
    )
    stock = stock.model_copy(update={"backend_state": backend.provision(stock)})
    stock = stock.model_copy(update={"backend_state": {**stock.backend_state, **backend.submit(stock)}})
    [stock_head] = [p for p in azure.arm.calls("PUT", "virtualMachines/") if p.path != head.path]
    stock_boot = yaml.safe_load(base64.b64decode(stock_head.body["properties"]["osProfile"]["customData"]))
    argv = shlex.split(stock_boot["runcmd"][-1].rpartition(" || ")[0])
    assert f"--env=EXTRA_PIP_PACKAGES={' '.join(CLUSTER_PIP_PACKAGES)}" in argv
    backend.teardown(stock)


def test_the_hosted_edge_refuses_a_tag_only_image_naming_the_field() -> None:
    """Through the policy the API and the queue apply (a 422 with ``loc``): hosted, with a registry."""
    from shared.spec.errors import SpecError
    from shared.spec.policy import SpecPolicy

    document = tiny_spec(dataset={"uri": "https://example.blob.core.windows.net/data/x.csv", "target": "y"})
    document["compute"] = {
        "backend": "vmcluster",
        "location": "westeurope",
        "resource_group": RG,
        "docker_image": f"{SERVER}/rapids-hpo:latest",
    }
    policy = SpecPolicy(hosted=True, azure=DEPLOYMENT)
    with pytest.raises(SpecError) as refused:
        policy.check(load_spec(document))
    assert [e["loc"] for e in refused.value.errors] == ["compute.docker_image"]
    document["compute"]["docker_image"] = PINNED
    policy.check(load_spec(document))
