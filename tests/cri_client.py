#!/usr/bin/env python3
"""A CRI client without a kubelet, for tests/engines_matrix.rs: runs one container in one pod through a
containerd's CRI plugin and prints what the container printed. Debian 13 packages no crictl; it packages
gRPC for Python and its code generator, which with the CRI's api.proto (tests/fixtures/cri-api/api.proto, copied
from Debian's golang-github-kubernetes-cri-api-dev) is all this needs. Runs inside the Debian 13 root
(scripts/trixie-root.sh run); owns nothing but WORKDIR, and removes the pod it made.

usage: cri_client.py SOCKET WORKDIR IMAGE CDI_DEVICE SCRIPT

The container runs `sh -c SCRIPT` from IMAGE with CDI_DEVICE (e.g. migrun.io/mig=trainer) asked for in the
ContainerConfig's CDI_devices field; the pod shares the node's network (no CNI). Prints the runtime's
name and version on stderr, the container's output on stdout, and exits with the container's exit code (or
1 with a one-line error when the CRI refuses a step).
"""
import os
import subprocess
import sys
import time

API_PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "cri-api", "api.proto")


def stubs(workdir):
    """api.proto compiled for Python into WORKDIR/gen."""
    gen = os.path.join(workdir, "gen")
    os.makedirs(gen, exist_ok=True)
    with open(API_PROTO) as src, open(os.path.join(gen, "api.proto"), "w") as dst:
        dst.write(src.read())
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I" + gen, "--python_out=" + gen,
         "--grpc_python_out=" + gen, os.path.join(gen, "api.proto")],
        check=True,
    )
    sys.path.insert(0, gen)


def main():
    if len(sys.argv) != 6:
        sys.exit("usage: cri_client.py SOCKET WORKDIR IMAGE CDI_DEVICE SCRIPT")
    socket, workdir, image, device, script = sys.argv[1:]
    stubs(workdir)
    import grpc
    import api_pb2 as api
    import api_pb2_grpc as rpc

    channel = grpc.insecure_channel("unix://" + socket)
    rt = rpc.RuntimeServiceStub(channel)
    v = rt.Version(api.VersionRequest(), timeout=30)
    print(f"cri: {v.runtime_name} {v.runtime_version} (CRI {v.runtime_api_version})", file=sys.stderr)

    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    uid = os.path.basename(workdir)
    pod_config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="matrix", uid=uid, namespace="migrun-test"),
        log_directory=logs,
        linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=api.NODE))),
    )
    pod = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod_config), timeout=60).pod_sandbox_id
    code = 1
    try:
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="probe"),
            image=api.ImageSpec(image=image),
            command=["sh", "-c", script],
            log_path="probe.log",
            CDI_devices=[api.CDIDevice(name=device)],
        )
        cid = rt.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=pod, config=config, sandbox_config=pod_config), timeout=60).container_id
        rt.StartContainer(api.StartContainerRequest(container_id=cid), timeout=60)
        deadline = time.monotonic() + 30
        while True:
            st = rt.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=30).status
            if st.state == api.CONTAINER_EXITED:
                code = st.exit_code
                break
            if time.monotonic() > deadline:
                sys.exit(f"cri_client: container {cid} still {st.state} after 30 s")
            time.sleep(0.1)
        # CRI log lines: "<time> <stream> <tag> <text>".
        with open(os.path.join(logs, "probe.log")) as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 3)
                print(parts[3] if len(parts) == 4 else "")
    except grpc.RpcError as e:
        sys.exit(f"cri_client: the CRI refused: {e.code().name}: {e.details()}")
    finally:
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    sys.exit(code)


if __name__ == "__main__":
    main()
