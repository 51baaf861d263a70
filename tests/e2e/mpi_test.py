"""Multi-process runs under MPI: `mpirun -np 2 millrace run` shards the dataset by rank, each rank
writes its own npy folder, and rank 0 writes the aggregate JSON. Run by ctest only when millrace
was built with MPI and mpirun exists."""

import json
import os
import shutil
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import unittest  # noqa: E402

import e2e_support as e2e  # noqa: E402

RANKS = 2


def mpirun(*args):
    # CI runs as root, and this machine may have fewer cores than ranks.
    return e2e.run([shutil.which("mpirun"), "-np", str(RANKS), "--oversubscribe",
                    "--allow-run-as-root", e2e.Env.millrace] + [str(a) for a in args])


class MpiTest(unittest.TestCase):
    def run_sharded(self, *extra):
        out = e2e.new_dir("mpi")
        summary = os.path.join(out, "summary.json")
        result = mpirun("run", e2e.source_path("configs", "default.yaml"), "--json", summary,
                        *e2e.sets(f"files.root={e2e.dataset()}", f"npy.dir={out}/npy",
                                  "batch.size=8", *extra))
        self.assertEqual(result.returncode, 0, e2e.describe(result))
        return out, summary, result

    def ids_of_rank(self, out, rank):
        ids = []
        for line in e2e.read_lines(os.path.join(out, "npy", f"rank{rank}", "batches.jsonl")):
            batch = json.loads(line)
            real = len(batch["ids"]) - batch["pad"]
            ids += batch["ids"][:real]
        return ids

    def test_every_sample_is_read_by_exactly_one_rank(self):
        out, summary, result = self.run_sharded()
        per_rank = [self.ids_of_rank(out, r) for r in range(RANKS)]
        union = sorted(i for ids in per_rank for i in ids)
        self.assertEqual(union, list(range(e2e.DATASET_COUNT)))
        for ids in per_rank:
            self.assertTrue(ids, "a rank read nothing")
        self.assertFalse(set(per_rank[0]) & set(per_rank[1]))
        # The list dealt to the ranks in turn (split: global): rank 0 takes entries 0, 2, 4, ...
        self.assertEqual(sorted(per_rank[0]), list(range(0, e2e.DATASET_COUNT, RANKS)))

        with open(summary) as f:
            data = json.load(f)
        self.assertEqual(data["images"], e2e.DATASET_COUNT)
        self.assertEqual([r["rank"] for r in data["ranks"]], list(range(RANKS)))
        self.assertEqual([r["part_index"] for r in data["ranks"]], list(range(RANKS)))
        self.assertEqual(sum(r["images"] for r in data["ranks"]), e2e.DATASET_COUNT)
        self.assertIn(f"({RANKS} ranks", result.stdout)
        self.assertEqual(result.stdout.count("images in"), 1, "only rank 0 prints the summary")

    def test_a_contiguous_split_is_mxnets_partition_by_count(self):
        out, _, _ = self.run_sharded("files.split=contiguous")
        per_rank = [self.ids_of_rank(out, r) for r in range(RANKS)]
        # Rank 0 reads the first ceil(N / 2) entries of the list.
        self.assertEqual(sorted(per_rank[0]), list(range((e2e.DATASET_COUNT + 1) // 2)))
        self.assertEqual(sorted(per_rank[0] + per_rank[1]), list(range(e2e.DATASET_COUNT)))

    def test_the_config_can_pin_the_part(self):
        out, summary, _ = self.run_sharded("files.num_parts=1", "files.part_index=0")
        # Each rank reads the whole dataset when the config says so.
        for r in range(RANKS):
            self.assertEqual(sorted(self.ids_of_rank(out, r)), list(range(e2e.DATASET_COUNT)))
        with open(summary) as f:
            self.assertEqual(json.load(f)["images"], RANKS * e2e.DATASET_COUNT)


if __name__ == "__main__":
    e2e.main()
