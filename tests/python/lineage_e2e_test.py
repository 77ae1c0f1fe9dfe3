"""Lineage instead of loss (docs/data_plane.md, "The activation chain"): the hidden states a
layer task produces stay in the activation store of the worker that ran it (its --scratch), and
the coordinator records only where they are. Here a worker holding some of them is removed for
good (killed, its scratch directory deleted, a fresh worker started in its place) between a job
that produced them (calibrate) and a job that reads them (the rest of an MC-MoE recipe, which
reuses the calibrate tasks). Then:
  - the second job succeeds: the tasks that read a lost chunk fail with DataLoss, and the
    coordinator re-runs the tasks that produced it (task_rerun events), and only those whose
    chunks were on the removed worker;
  - its export is byte-identical to the same recipe run undisturbed by `moec run --workers 2`.
Usage: lineage_e2e_test.py BIN_DIR
"""
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moec_cluster import MCMOE_STAGES, Cluster, export_digest as digest  # noqa: E402

BIN_DIR = None

HEAD = """\
name: %s
model: big
output: out-%s
calibration: {path: calib.txt, samples: 32, seqlen: 128, seed: 0, sampling: random_windows}
workers: 1
threads: 1
stages:
  - {id: stats, kind: calibrate}
"""
# The rest of the MC-MoE pipeline (after calibrate).
REST = MCMOE_STAGES[MCMOE_STAGES.index("\n") + 1:]


class LineageTest(unittest.TestCase):
    def test_a_removed_holder_costs_only_the_tasks_whose_chunks_it_held(self):
        with Cluster(BIN_DIR, workers=2) as c:
            subprocess.run([c.moec, "make-tiny-model", c.path("big"), "--arch", "mixtral",
                            "--layers", "6"], check=True, capture_output=True)
            for name, text in (("first", HEAD), ("second", HEAD + REST), ("quiet", HEAD + REST)):
                with open(c.path(name + ".yaml"), "w") as f:
                    f.write(text % (name, name))
            subprocess.run([c.moec, "run", c.path("quiet.yaml"), "--workers", "2",
                            "--data-dir", c.path("quiet-state")], check=True, capture_output=True)
            moec = c.install_client()
            client = moec.Client(c.coordinator_address, token_file=c.client_token_file)
            first = client.wait(client.submit(c.path("first.yaml")).job_id)
            self.assertEqual(first.state, "succeeded", first.error)
            ran_on = self.ran_on(client, first.job_id)
            # The worker holding the most calibrate chunks goes, with its disk.
            victim = max((0, 1), key=lambda i: sum(w.endswith("-py%d" % i) for w in ran_on.values()))
            lost = {t.split("/", 1)[1] for t, w in ran_on.items() if w.endswith("-py%d" % victim)}
            print("calibrate tasks by worker:", ran_on, "; removing py%d" % victim)
            self.assertTrue(lost)
            c.kill_worker(victim)
            shutil.rmtree(c.path("scratch%d" % victim))
            c.start_worker(victim)
            second = client.wait(client.submit(c.path("second.yaml")).job_id)
            self.assertEqual(second.state, "succeeded", second.error)
            events = list(client.watch(second.job_id))
            rerun = {e.task_id.split("/", 1)[1] for e in events if e.kind == "task_rerun"}
            print("re-run:", sorted(rerun), "of lost", sorted(lost))
            self.assertTrue(rerun)
            self.assertLessEqual(rerun, lost)
            self.assertTrue(any(e.kind == "factor_corrupt" and "no worker holding it" in e.message
                                for e in events))
            self.assertEqual(digest(c.path("out-second")), digest(c.path("out-quiet")))
            client.close()

    @staticmethod
    def ran_on(client, job_id):
        """Task id -> the worker of its last lease, for the calibrate tasks of `job_id`."""
        out = {}
        for e in client.watch(job_id):
            m = re.search(r"attempt \d+ on (\S+)", e.message)
            if e.kind == "task_leased" and "/stats/" in e.task_id and m:
                out[e.task_id] = m.group(1)
        return out


if __name__ == "__main__":
    BIN_DIR = sys.argv.pop(1)
    unittest.main()
