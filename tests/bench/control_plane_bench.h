// Internal to control_plane_bench: what its coordinator side (control_plane_bench.cc) and its
// worker processes (control_plane_bench_worker.cc) share.
#ifndef MOEC_TESTS_BENCH_CONTROL_PLANE_BENCH_H_
#define MOEC_TESTS_BENCH_CONTROL_PLANE_BENCH_H_

#include <chrono>
#include <string>

namespace control_plane_bench {

using Clock = std::chrono::steady_clock;

inline double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// BENCH_LEASE_NEXT=0: the two-call protocol (LeaseTask, then CompleteTask) for every task;
// default: as moec-worker does, the completing call also asks for the next task.
bool LeaseNext();

// --- worker process -------------------------------------------------------------------------
// Reads commands from stdin, one per line, and answers each with one line on stdout:
//   rtt N      N bare Heartbeats back to back      -> "rtt <ms> <ms> ..."
//   run        lease and complete until told stop  -> "lat <ms> ...", "lease <ms> ...",
//                                                     "done <last completion, ns> <granted>"
//   stop       (read while idle in a run: the job ended)
// Errors: "error <message>" and exit 1.
int WorkerMain(const std::string& address, int index);

}  // namespace control_plane_bench

#endif  // MOEC_TESTS_BENCH_CONTROL_PLANE_BENCH_H_
