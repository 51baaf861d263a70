"""millrace.torch.Loader in multi-process runs: separate Python processes placed by RANK /
WORLD_SIZE and by torch.distributed (gloo), whose epochs must be disjoint, cover the data set,
mix its classes on every rank and give every rank the same number of batches; and states taken
on one number of ranks resumed on another, delivering the rest of the epoch exactly once."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import DATASET_COUNT

TIMEOUT_S = 300

# One rank: reads `epochs` epochs (or the rest of one from a state, then stops after `stop`
# batches when asked) and writes what it saw as JSON.
WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import millrace.torch

    args = json.loads(sys.argv[1])
    if args.get("gloo"):
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=args["gloo"], rank=args["rank"],
                                world_size=args["world"])
        for name in ("RANK", "WORLD_SIZE"):
            assert name not in os.environ  # the place comes from torch.distributed alone
    state = None
    if args.get("state"):
        state = json.load(open(args["state"]))
    loader = millrace.torch.Loader(args["config"], state=state)
    out = {"rank": loader.rank, "world": loader.world_size, "len": len(loader), "epochs": []}
    for epoch in args["epochs"]:
        loader.set_epoch(epoch)
        batches = []
        for k, batch in enumerate(loader):
            real = len(batch.ids) - batch.pad
            batches.append({"ids": batch.ids[:real].tolist(),
                            "labels": batch.labels[:real].tolist(), "pad": batch.pad,
                            "rows": len(batch.ids),
                            "sums": [float(x.double().sum()) for x in batch.images[:real]]})
            if args.get("stop") is not None and k + 1 == args["stop"]:
                json.dump(loader.state_dict(), open(args["save"], "w"))
                break
        out["epochs"].append(batches)
    if args.get("gloo"):
        # Every rank has as many batches: a collective per batch would not stall.
        counts = torch.tensor([len(out["epochs"][0])])
        everyone = [torch.zeros(1, dtype=torch.int64) for _ in range(args["world"])]
        dist.all_gather(everyone, counts)
        out["all_counts"] = [int(c) for c in everyone]
        dist.destroy_process_group()
    print(json.dumps(out))
""")


def config(dataset, **extra):
    files = {"type": "files", "root": dataset, "list": "labels.lst", "shuffle": True}
    files.update(extra)
    return {
        "pipeline": {"threads": 2, "seed": 11},
        "stages": [files, {"type": "decode"},
                   {"type": "augment", "resize": 40, "crop": "random", "size": [32, 32],
                    "mirror": 0.5},
                   {"type": "normalize", "dtype": "float32", "mean": [124, 117, 104]},
                   {"type": "batch", "size": 4, "last": "partial"}],
    }


def launch(tmp_path, world, args_of, env_of=None):
    """Starts `world` rank processes at once and returns their outputs, in rank order."""
    procs = []
    for r in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update(env_of(r) if env_of else {})
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args_of(r))],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=TIMEOUT_S)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def sorted_lines(dataset):
    """A sorted list (class 0 first, then 1, ...) of the data set: a contiguous split would give
    each rank a few classes only."""
    lines = open(os.path.join(dataset, "labels.lst")).read().splitlines()
    lines.sort(key=lambda line: float(line.split("\t")[1]))
    return lines


@pytest.fixture(scope="module")
def sorted_list(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("sorted") / "sorted.lst"
    path.write_text("\n".join(sorted_lines(dataset)) + "\n")
    return str(path)


def check_epochs(outs, world):
    labels_of = {}
    for epoch in range(len(outs[0]["epochs"])):
        seen = []
        counts = set()
        for out in outs:
            batches = out["epochs"][epoch]
            counts.add(len(batches))
            ids = [i for b in batches for i in b["ids"]]
            labels = {int(label) for b in batches for label in b["labels"]}
            for b in batches:
                for i, label in zip(b["ids"], b["labels"]):
                    labels_of[i] = label
            # Every rank sees every class of the sorted list, in every epoch.
            assert labels == {0, 1, 2, 3}, f"rank {out['rank']} epoch {epoch}: {labels}"
            seen += ids
        assert len(counts) == 1, f"epoch {epoch}: batch counts {counts}"
        assert sorted(seen) == list(range(DATASET_COUNT)), f"epoch {epoch} is not a cover"
    return labels_of


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_from_rank_and_world_size_share_one_global_shuffle(dataset, sorted_list, tmp_path,
                                                                 world):
    cfg = config(dataset, list=sorted_list)
    outs = launch(tmp_path, world, lambda r: {"config": cfg, "epochs": [0, 1]},
                  lambda r: {"RANK": str(r), "WORLD_SIZE": str(world)})
    assert [(o["rank"], o["world"]) for o in outs] == [(r, world) for r in range(world)]
    check_epochs(outs, world)
    # A new order each epoch, on each rank.
    for out in outs:
        assert [b["ids"] for b in out["epochs"][0]] != [b["ids"] for b in out["epochs"][1]]
    # 40 samples on 3 ranks: 14 each, two ranks repeat a sample (as padding), 4 batches each.
    if world == 3:
        assert sum(b["pad"] for o in outs for b in o["epochs"][0]) == 2
        assert {o["len"] for o in outs} == {4}


def test_contiguous_split_keeps_mxnets_slices(dataset, sorted_list, tmp_path):
    cfg = config(dataset, list=sorted_list, split="contiguous")
    outs = launch(tmp_path, 2, lambda r: {"config": cfg, "epochs": [0]},
                  lambda r: {"RANK": str(r), "WORLD_SIZE": "2"})
    labels = [{int(label) for b in o["epochs"][0] for label in b["labels"]} for o in outs]
    assert labels == [{0, 1}, {2, 3}]


def test_ranks_from_torch_distributed_with_gloo(dataset, sorted_list, tmp_path):
    cfg = config(dataset, list=sorted_list)
    init = f"file://{tmp_path / 'rendezvous'}"
    outs = launch(tmp_path, 2, lambda r: {"config": cfg, "epochs": [0], "gloo": init, "rank": r,
                                          "world": 2})
    assert [(o["rank"], o["world"]) for o in outs] == [(0, 2), (1, 2)]
    check_epochs(outs, 2)
    assert outs[0]["all_counts"] == outs[1]["all_counts"] == [5, 5]


def test_the_config_setting_the_part_wins_over_the_environment(dataset, tmp_path):
    cfg = config(dataset, num_parts=1, part_index=0)
    outs = launch(tmp_path, 1, lambda r: {"config": cfg, "epochs": [0]},
                  lambda r: {"RANK": "1", "WORLD_SIZE": "2"})
    assert (outs[0]["rank"], outs[0]["world"]) == (0, 1)
    assert sorted(i for b in outs[0]["epochs"][0] for i in b["ids"]) == list(range(DATASET_COUNT))


@pytest.mark.parametrize("before,after,stop", [(2, 1, 2), (1, 3, 3), (3, 2, 1)])
def test_a_state_resumes_on_another_number_of_ranks_exactly_once(dataset, tmp_path, before,
                                                                  after, stop):
    cfg = config(dataset)
    # The uninterrupted epoch 1 on one rank: what each sample looks like (same augmentation).
    whole = launch(tmp_path, 1, lambda r: {"config": cfg, "epochs": [1]})[0]["epochs"][0]
    look = {i: x for b in whole for i, x in zip(b["ids"], b["sums"])}
    # Stop every rank after `stop` batches of epoch 1; each saves its state.
    first = launch(tmp_path, before,
                   lambda r: {"config": cfg, "epochs": [1], "stop": stop,
                              "save": str(tmp_path / f"state{r}.json")},
                   lambda r: {"RANK": str(r), "WORLD_SIZE": str(before)})
    delivered = [i for o in first for b in o["epochs"][0] for i in b["ids"]]
    states = [json.load(open(tmp_path / f"state{r}.json")) for r in range(before)]
    # Any rank's state stands for all: they agree on what was taken.
    assert len({s["global_samples"] for s in states}) == 1
    taken = states[0]["global_samples"]
    assert taken == before * stop * 4
    # Resume on `after` ranks from the last rank's state.
    saved = str(tmp_path / f"state{before - 1}.json")
    second = launch(tmp_path, after, lambda r: {"config": cfg, "epochs": [1], "state": saved},
                    lambda r: {"RANK": str(r), "WORLD_SIZE": str(after)})
    rest = [i for o in second for b in o["epochs"][0] for i in b["ids"]]
    assert len({len(o["epochs"][0]) for o in second}) == 1  # equal batch counts
    assert not set(delivered) & set(rest), "a sample delivered twice"
    assert len(rest) == len(set(rest)), "a sample delivered twice after the resume"
    assert sorted(delivered + rest) == list(range(DATASET_COUNT)), "a sample never delivered"
    assert len(delivered) == taken
    # Each sample as the uninterrupted epoch made it: its augmentation is keyed on its id.
    for o in first + second:
        for b in o["epochs"][0]:
            for i, x in zip(b["ids"], b["sums"]):
                assert x == look[i], f"sample {i} differs from the uninterrupted epoch"
