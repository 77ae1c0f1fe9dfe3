"""Machine failures do not fail jobs (docs/operations.md, "Failures and resume"): an MC-MoE job
(calibrate, quant_loss, allocate_bits, gptq, export) on a 4-layer random Mixtral runs on a real
coordinator and 3 workers on loopback while the test SIGKILLs workers 10 times (each restarted
at once under its name) and the coordinator 3 times (restarted on the same port and data
directory), at random moments (seeded; MOEC_CHAOS_SEED picks another schedule). Then:
  - the job succeeds;
  - its export is byte-identical to the same recipe run undisturbed by `moec run --workers 3`;
  - no task whose outputs survived was computed again: with --durable-completions every
    completion is on disk before the worker hears of it, so each task is done exactly once in
    the job's event log (attempts cut short by a kill are re-leased, never redone after done).
Usage: chaos_e2e_test.py BIN_DIR
"""
import collections
import os
import random
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moec_cluster import MCMOE_STAGES, Cluster, export_digest as digest  # noqa: E402

BIN_DIR = None
WORKER_KILLS, COORDINATOR_KILLS = 10, 3

RECIPE = """\
name: chaos
model: big
output: %s
calibration: {path: calib.txt, samples: 64, seqlen: 256, seed: 0, sampling: random_windows}
workers: 1
threads: 1
stages:
""" + MCMOE_STAGES


class ChaosTest(unittest.TestCase):
    def test_kills_do_not_fail_the_job_or_change_its_bytes(self):
        seed = int(os.environ.get("MOEC_CHAOS_SEED", "7"))
        rng = random.Random(seed)
        with Cluster(BIN_DIR, workers=3, coordinator_args=[
                "--lease-ms", "4000", "--durable-completions"]) as c:
            subprocess.run([c.moec, "make-tiny-model", c.path("big"), "--arch", "mixtral",
                            "--hidden", "384", "--experts", "8", "--expert-width", "768",
                            "--layers", "4"], check=True, capture_output=True)
            for name in ("quiet", "chaos"):
                with open(c.path(name + ".yaml"), "w") as f:
                    f.write(RECIPE % ("out-" + name))
            # Undisturbed, on an embedded cluster of its own.
            start = time.time()
            subprocess.run([c.moec, "run", c.path("quiet.yaml"), "--workers", "3",
                            "--data-dir", c.path("quiet-state")], check=True, capture_output=True)
            quiet_seconds = time.time() - start
            moec = c.install_client()
            client = moec.Client(c.coordinator_address, token_file=c.client_token_file)
            job = client.submit(c.path("chaos.yaml"))
            kills = self.disturb(c, job.job_id, rng, quiet_seconds)
            client.close()
            client = moec.Client(c.coordinator_address, token_file=c.client_token_file)
            final = self.wait(client, job.job_id, deadline=time.time() + 300)
            self.assertEqual(final.state, "succeeded", final.error)
            print("seed %d: %s in %.0f s undisturbed; disturbed job done: %s" %
                  (seed, kills, quiet_seconds, final.tasks))
            self.assertEqual(kills, {"worker": WORKER_KILLS, "coordinator": COORDINATOR_KILLS})
            self.assertEqual(digest(c.path("out-chaos")), digest(c.path("out-quiet")))
            events = list(client.watch(job.job_id))
            done = collections.Counter(e.task_id for e in events if e.kind == "task_done")
            leases = sum(1 for e in events if e.kind == "task_leased")
            print("%d tasks, %d leases (the kills cut %d attempts short)" %
                  (len(done), leases, leases - len(done)))
            self.assertTrue(done)
            self.assertGreaterEqual(leases, len(done))
            self.assertEqual({t: n for t, n in done.items() if n != 1}, {})
            self.assertEqual(sum(done.values()), sum(final.tasks.values()))
            client.close()

    def disturb(self, c, job_id, rng, quiet_seconds):
        """Kills at random moments over about the undisturbed run time, a coordinator kill
        every few worker kills; each process is restarted at once."""
        events = ["worker"] * WORKER_KILLS + ["coordinator"] * COORDINATOR_KILLS
        rng.shuffle(events)
        gap = max(0.5, 0.8 * quiet_seconds / len(events))
        kills = collections.Counter()
        listen = c.coordinator_address
        for what in events:
            time.sleep(rng.uniform(0.3, 2 * gap))
            if what == "worker":
                i = rng.randrange(c.workers)
                c.kill_worker(i)
                c.start_worker(i)
            else:
                c.kill_coordinator()
                time.sleep(rng.uniform(0, 1))
                c.start_coordinator(listen)
            kills[what] += 1
        return dict(kills)

    def wait(self, client, job_id, deadline):
        while True:
            try:
                job = client.status(job_id)
                if job.state in ("succeeded", "failed", "cancelled"):
                    return job
            except Exception as e:  # the coordinator is still starting
                if time.time() > deadline:
                    raise
                print("waiting:", e)
            self.assertLess(time.time(), deadline, "the job did not end in time")
            time.sleep(0.5)


if __name__ == "__main__":
    BIN_DIR = sys.argv.pop(1)
    unittest.main()
