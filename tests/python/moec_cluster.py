"""A real moec cluster for Python tests: moec-coordinator and moec-worker processes on loopback,
with separate client and worker tokens, a random tiny Mixtral written by `moec make-tiny-model`,
and a calibration and held-out text. Used by the Python client's tests (test_client.py) and the
dashboard's browser test (dashboard_e2e_test.py).

    with Cluster(bin_dir, workers=1, dashboard=True) as c:
        c.coordinator_address, c.client_token_file, c.dashboard_url, c.recipe(...)
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

# Stages that leave a figure of each kind the report draws: expert usage (calibrate), the bit
# allocation (allocate_bits), GPTQ error (gptq), perplexity against size (evaluate).
FULL_STAGES = """\
  - {id: stats, kind: calibrate}
  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3, 4], group_size: 32}}
  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: [2, 3, 4], average_bits: 3.0}}
  - {id: quant, kind: gptq, needs: [bits], with: {group_size: 32}}
  - {id: out, kind: export, needs: [quant], with: {format: gptq}}
  - {id: eval, kind: evaluate, needs: [out]}
"""


# The MC-MoE pipeline at 3 average bits, group 64 (the chaos, lineage and bytes tests).
MCMOE_STAGES = """\
  - {id: stats, kind: calibrate}
  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3, 4], group_size: 64}}
  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: [2, 3, 4], average_bits: 3.0}}
  - {id: quant, kind: gptq, needs: [bits], with: {group_size: 64, attn_bits: 4}}
  - {id: out, kind: export, needs: [quant], with: {format: gptq}}
"""


def export_digest(directory):
    """SHA-256 over the .safetensors files of an export, in name order."""
    import glob
    import hashlib
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pip_install_client(target, scratch):
    """pip-installs the Python client into `target` from a copy of python/ and proto/ under
    `scratch` (pip builds in the source tree: tests that install at once must not share it)."""
    import sys
    for d in ("python", "proto"):
        shutil.copytree(os.path.join(SOURCE_DIR, d), os.path.join(scratch, d),
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation",
                    "--no-deps", "--disable-pip-version-check", "--target", target,
                    os.path.join(scratch, "python")], check=True)


class Cluster:
    def __init__(self, bin_dir, workers=1, dashboard=False, coordinator_args=(), scratch=True):
        """`scratch`: workers get a --scratch directory, hence an activation store (else the
        hidden states go through the coordinator)."""
        self.bin_dir = os.path.abspath(bin_dir)
        self.moec = os.path.join(self.bin_dir, "client", "moec")
        self.workers = workers
        self.dashboard = dashboard
        self.coordinator_args = list(coordinator_args)
        self.scratch = scratch
        self.procs = []
        self.coordinator = None
        self.worker_procs = []
        self.dir = tempfile.mkdtemp(prefix="moec_py_e2e.")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("MOEC_KEEP_E2E_DIR"):
            print("kept", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self):
        self.client_token_file = self.path("client.tok")
        self.worker_token_file = self.path("worker.tok")
        for f in (self.client_token_file, self.worker_token_file):
            with open(f, "w") as out:
                out.write(os.urandom(16).hex())
        with open(self.client_token_file) as f:
            self.client_token = f.read()
        subprocess.run([self.moec, "make-tiny-model", self.path("m"), "--arch", "mixtral"],
                       check=True, capture_output=True)
        shutil.copy("/usr/share/common-licenses/GPL-3", self.path("calib.txt"))
        shutil.copy("/usr/share/common-licenses/Apache-2.0", self.path("heldout.txt"))
        self.start_coordinator("127.0.0.1:0")
        for i in range(self.workers):
            self.worker_procs.append(None)
            self.start_worker(i)

    def start_coordinator(self, listen):
        """Starts moec-coordinator on `listen` over the cluster's data directory (again after
        kill_coordinator, on the same port: it recovers every job)."""
        args = [os.path.join(self.bin_dir, "coordinator", "moec-coordinator"),
                "--listen", listen, "--data-dir", self.path("coord"),
                "--client-token-file", self.client_token_file,
                "--worker-token-file", self.worker_token_file, "--allowed-root", self.dir]
        args += self.coordinator_args
        if self.dashboard:
            args += ["--http-listen", "127.0.0.1:0"]
        starts = getattr(self, "_coordinator_starts", 0)
        self._coordinator_starts = starts + 1
        out = self._spawn(args, "coordinator%d" % starts if starts else "coordinator")
        self.coordinator = self.procs[-1]
        port = self._wait_for(out, r"listening on port (\d+)")
        self.coordinator_address = "127.0.0.1:%s" % port
        if self.dashboard:
            self.dashboard_url = "http://127.0.0.1:%s" % self._wait_for(out, r"dashboard on port (\d+)")

    def start_worker(self, i):
        """Starts worker i (again after kill_worker: same name and scratch directory)."""
        starts = getattr(self, "_worker_starts", {})
        self._worker_starts = starts
        n = starts.get(i, 0)
        starts[i] = n + 1
        args = [os.path.join(self.bin_dir, "worker", "moec-worker"),
                "--coordinator", self.coordinator_address,
                "--token-file", self.worker_token_file, "--name", "py%d" % i]
        if self.scratch:
            args += ["--scratch", self.path("scratch%d" % i)]
        self._spawn(args, "worker%d.%d" % (i, n))
        self.worker_procs[i] = self.procs[-1]

    def kill_worker(self, i):
        self.worker_procs[i].kill()
        self.worker_procs[i].wait()

    def kill_coordinator(self):
        self.coordinator.kill()
        self.coordinator.wait()

    def _spawn(self, args, name):
        out = self.path(name + ".out")
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
        with open(out, "w") as o, open(self.path(name + ".log"), "w") as e:
            self.procs.append(subprocess.Popen(args, stdout=o, stderr=e, env=env))
        return out

    def _wait_for(self, out_file, pattern, seconds=30):
        deadline = time.time() + seconds
        while time.time() < deadline:
            with open(out_file) as f:
                m = re.search(pattern, f.read())
            if m:
                return m.group(1)
            if self.coordinator is not None and self.coordinator.poll() is not None:
                break
            time.sleep(0.05)
        with open(out_file.replace(".out", ".log")) as f:
            log = f.read()[-3000:]
        raise RuntimeError("no '%s' in %s; log:\n%s" % (pattern, out_file, log))

    def install_client(self):
        """pip-installs the Python client (python/) into the cluster's directory and imports it."""
        import importlib
        import sys
        target = self.path("python-client")
        pip_install_client(target, self.path("client-src"))
        sys.path.insert(0, target)
        return importlib.import_module("moec")

    def recipe(self, name, stages=FULL_STAGES):
        """A recipe file in the cluster's directory (paths relative to it); returns its path."""
        text = ("name: %s\nmodel: m\noutput: out-%s\n"
                "calibration: {path: calib.txt, samples: 16, seqlen: 64, seed: 0, "
                "sampling: random_windows}\n"
                "evaluation: {path: heldout.txt, seqlen: 64}\nworkers: 1\nstages:\n%s"
                % (name, name, stages))
        path = self.path(name + ".yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def cli(self, *args):
        """Runs `moec ARGS --coordinator ... --token-file <client token>`; its stdout."""
        r = subprocess.run([self.moec, *args, "--coordinator", self.coordinator_address,
                            "--token-file", self.client_token_file],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("moec %s exited %d: %s" % (" ".join(args), r.returncode, r.stderr))
        return r.stdout
