"""The Python client (python/moec) against a real coordinator and worker: installed with pip from
the repository (stubs generated from proto/ by its setup.py) into a temporary directory, then
  - submit (a recipe file, YAML text, overrides), the same recipe again (existed);
  - watch: events with progress up to job_succeeded, done == total;
  - status, list, workers; report (a dict with the evaluations' perplexities), report_files
    (report.md and figures, written to a directory);
  - cancel and resume of a running job;
  - errors as MoecError with the gRPC code and moec's message: an unknown job (NOT_FOUND), a
    recipe mistake (INVALID_ARGUMENT naming it), a wrong token (UNAUTHENTICATED), the worker's
    token (PERMISSION_DENIED, the client role), an unreachable coordinator (UNAVAILABLE).
Usage: client_test.py BIN_DIR
"""
import os
import shutil
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from moec_cluster import Cluster, pip_install_client  # noqa: E402

BIN_DIR = None
INSTALL_DIR = None
moec = None


def read(path):
    with open(path) as f:
        return f.read()


def setUpModule():
    global INSTALL_DIR, moec
    INSTALL_DIR = tempfile.mkdtemp(prefix="moec_py_client.")
    pip_install_client(os.path.join(INSTALL_DIR, "lib"), os.path.join(INSTALL_DIR, "src"))
    sys.path.insert(0, os.path.join(INSTALL_DIR, "lib"))
    import moec as installed
    moec = installed
    assert moec.__file__.startswith(INSTALL_DIR), moec.__file__


def tearDownModule():
    shutil.rmtree(INSTALL_DIR, ignore_errors=True)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(BIN_DIR, workers=1).__enter__()
        cls.client = moec.Client(cls.cluster.coordinator_address,
                                 token_file=cls.cluster.client_token_file)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.cluster.__exit__(None, None, None)

    def test_submit_watch_status_report(self):
        c = self.client
        job = c.submit(self.cluster.recipe("full"))
        self.assertFalse(job.existed)
        self.assertEqual(sum(job.tasks.values()), 9)
        events = list(c.watch(job))
        self.assertEqual(events[0].kind, "job_submitted")
        self.assertEqual(events[-1].kind, "job_succeeded")
        self.assertEqual((events[-1].done, events[-1].total), (9, 9))
        dones = [e.done for e in events]
        self.assertEqual(dones, sorted(dones))  # progress only grows
        self.assertTrue(any(e.kind == "task_leased" and "attempt 1 on" in e.message for e in events))

        status = c.status(job.job_id)
        self.assertEqual(status.state, "succeeded")
        self.assertEqual(status.tasks, {"done": 9})
        self.assertIsNotNone(status.ended)
        self.assertIn(job.job_id, [j.job_id for j in c.list()])
        self.assertEqual([w.name for w in c.workers()], ["py0"])

        report = c.report(job)
        self.assertEqual(report["state"], "JOB_SUCCEEDED")
        evaluation = report["evaluations"][0]
        self.assertGreater(evaluation["model"]["perplexity"], 1)
        self.assertGreater(evaluation["baseline"]["size_bytes"], evaluation["model"]["size_bytes"])
        self.assertAlmostEqual(evaluation["model"]["average_expert_bits"], 3.0, places=6)
        out = tempfile.mkdtemp(prefix="moec_py_report.")
        files = c.report_files(job, out)
        self.assertIn("report.md", files)
        self.assertIn("bit_allocation.svg", files)
        with open(os.path.join(out, "bit_allocation.svg")) as f:
            self.assertTrue(f.read().startswith("<svg"))
        shutil.rmtree(out)
        # The CLI reads the same report.
        self.assertIn("%.3f" % evaluation["model"]["perplexity"], self.cluster.cli("report", job.job_id))

        again = c.submit(self.cluster.recipe("full"))
        self.assertTrue(again.existed)
        self.assertEqual(again.job_id, job.job_id)

    def test_yaml_text_overrides_cancel_and_resume(self):
        c = self.client
        yaml = read(self.cluster.recipe("slow", "  - {id: wait, kind: noop, with: {sleep_ms: 100}}\n"
                                        "  - {id: more, kind: noop, needs: [wait], with: {sleep_ms: 4000}}\n"))
        yaml = yaml.replace("model: m", "model: %s" % self.cluster.path("m"))
        yaml = yaml.replace("output: out-slow", "output: %s" % self.cluster.path("out-slow"))
        for rel in ("calib.txt", "heldout.txt"):
            yaml = yaml.replace("path: " + rel, "path: " + self.cluster.path(rel))
        job = c.submit(yaml, overrides={"name": "slow-text"})
        self.assertEqual(job.name, "slow-text")
        deadline = time.time() + 30
        while c.status(job).tasks.get("leased", 0) == 0 or c.status(job).tasks.get("done", 0) == 0:
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        c.cancel(job)
        self.assertEqual(c.status(job).state, "cancelled")
        with self.assertRaises(moec.MoecError) as e:
            c.cancel(job)
        self.assertEqual(e.exception.code.name, "FAILED_PRECONDITION")
        c.resume(job)
        final = c.wait(job)
        self.assertEqual(final.state, "succeeded")
        self.assertEqual(final.tasks, {"done": 4})

    def test_errors_carry_the_grpc_code_and_moecs_message(self):
        c = self.client
        with self.assertRaises(moec.MoecError) as e:
            c.status("nojob")
        self.assertEqual(e.exception.code.name, "NOT_FOUND")
        self.assertIn("nojob", e.exception.message)
        bad = self.cluster.recipe("bad")
        with open(bad, "w") as f:
            f.write(read(self.cluster.recipe("full")).replace("kind: gptq", "kind: gptqq"))
        with self.assertRaises(moec.MoecError) as e:
            c.submit(bad)
        self.assertEqual(e.exception.code.name, "INVALID_ARGUMENT")
        self.assertIn("bad.yaml:11: stage 'quant': unknown kind 'gptqq'", e.exception.message)
        # Text without a file: relative paths are refused with the rule.
        with self.assertRaises(moec.MoecError) as e:
            c.submit(read(self.cluster.recipe("full")))
        self.assertEqual(e.exception.code.name, "INVALID_ARGUMENT")
        self.assertIn("recipe:2: model 'm' is relative", e.exception.message)
        with moec.Client(self.cluster.coordinator_address, token="wrong") as wrong:
            with self.assertRaises(moec.MoecError) as e:
                wrong.list()
            self.assertEqual(e.exception.code.name, "UNAUTHENTICATED")
        with moec.Client(self.cluster.coordinator_address,
                         token_file=self.cluster.worker_token_file) as worker:
            with self.assertRaises(moec.MoecError) as e:
                worker.submit(self.cluster.recipe("full"))
            self.assertEqual(e.exception.code.name, "PERMISSION_DENIED")
            self.assertIn("client role", e.exception.message)
        with moec.Client("127.0.0.1:1", token="x", timeout=2) as nobody:
            with self.assertRaises(moec.MoecError) as e:
                nobody.list()
            self.assertEqual(e.exception.code.name, "UNAVAILABLE")


if __name__ == "__main__":
    BIN_DIR = sys.argv.pop(1)
    unittest.main()
