// Multi-process runs under MPI: one millrace process per rank, each reading its own shard.
//
// Contract: process_group() initialises MPI the first time it is called when (and only when) the
// process was started by an MPI launcher (mpirun sets OMPI_COMM_WORLD_SIZE, PMI_SIZE or
// PMIX_RANK) and millrace was built with MPI; otherwise it reports a single process, rank 0 of 1,
// and millrace runs as it does without MPI. Without MPI, the environment's RANK and WORLD_SIZE
// (set by torchrun and PyTorch's env:// launchers) place the process when both are set (a pair
// that names no process throws std::runtime_error), and set_process_group() places it
// explicitly (an embedder that knows its process group: the Python package under
// torch.distributed). Sources split the data set by this place unless their config sets
// num_parts / part_index. Call these from the main thread only: MPI is initialised at
// MPI_THREAD_FUNNELED. gather_run_stats() is a collective of MPI ranks: every rank calls it.
#pragma once

#include <string>
#include <vector>

#include "millrace/stats.hpp"

namespace millrace {

struct ProcessGroup {
  int rank = 0;
  int world = 1;
  bool mpi = false;  // MPI is initialised for this process
};

const ProcessGroup& process_group();
// For pipelines built from now on; ignored under MPI. Throws std::invalid_argument unless
// 0 <= rank < world.
void set_process_group(int rank, int world);
// Finalises MPI if process_group() initialised it (also registered with atexit).
void shutdown_process_group();
// Every rank's statistics, in rank order, on rank 0; an empty vector on the other ranks.
std::vector<RunStats> gather_run_stats(const RunStats& mine);
// The totals of a multi-rank run: counts summed, images/s summed (the ranks run in parallel),
// times the slowest rank's, skipped lists concatenated (paths prefixed with `rank<k>: `).
RunStats combine_run_stats(const std::vector<RunStats>& ranks);
// JSON with the totals at the top level and `ranks`: one object per rank (rank, part_index,
// num_parts, images, batches, seconds, images_per_second, startup_seconds, skipped).
std::string ranks_summary_json(const std::string& name, const std::vector<RunStats>& ranks);

}  // namespace millrace
