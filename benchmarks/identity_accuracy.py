"""Identity accuracy against the generator's ground truth.

Runs the real pipeline (``cdp generate`` -> ``land`` -> ``standardize`` -> ``stitch``) in a work
folder, then compares ``customer_records`` with ``_truth/records.csv`` (source, record_id, person_id)
and prints pairwise precision, recall and F1 of same-person decisions, over-merged customers and
split persons.

It also prints the *linkage ceiling*: the same metrics for the partition in which every valid
(not blocked, not invalid) identifier links every record that carries it, with no guard at all
(no hubs, no limits, no quarantine). No rule that decides from identifiers alone can link two
records this partition keeps apart, so its recall bounds what stitching can reach on the data;
truth pairs it misses are records that share no identifier with the rest of their person.

Last, the same metrics over *identifiable* records only: those carrying at least one valid identifier
that a single person's records carry in the truth. The rest (anonymous sessions that never log in or
check out, a family tablet's anonymous sessions) cannot be attributed by any identifier-based rule,
so this line isolates the stitcher's own mistakes from the limits of the data.

And *recall over linkable pairs*: of the same-person record pairs that the data can link at all (the
two records connect through identifiers that only this person's records carry), the share stitching
put into one customer. Its complement is links the stitcher's guards (hubs, limits, quarantine) cut
or missed, not links the data never had.

    /work/venv/bin/python benchmarks/identity_accuracy.py --customers 10000
    /work/venv/bin/python benchmarks/identity_accuracy.py --customers 100000 --workdir /data/bench
    /work/venv/bin/python benchmarks/identity_accuracy.py --workdir /tmp/pb --evaluate-only  # after
        benchmarks/pipeline.py --lake /tmp/pb/lake --keep: score that run's stitch as it is

``--before`` also stitches the same raw data with the identifier canonicalisation of before issue 28
(e-mail lower-cased only: no Gmail dot folding, ``+tag`` stripping or googlemail alias; every valid
phone number links, 400 / 800 service lines included) and prints both side by side.

Goal (issue 3): precision >= 0.999, recall >= 0.99.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CDP = [sys.executable, "-m", "cdp.jobs.cli"]


def step(name: str, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    print(f"-- cdp {name} {' '.join(args)}", flush=True)
    completed = subprocess.run([*CDP, name, *args], env=env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"cdp {name} failed with exit code {completed.returncode}")
    elapsed = time.perf_counter() - started
    print(f"   {name}: {elapsed:.1f} s", flush=True)
    return elapsed


def pairs(sizes: pd.Series) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def clean_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """One person per (source, record_id), every key a string."""
    return truth.astype({"source": str, "record_id": str, "person_id": str}).drop_duplicates(["source", "record_id"])


def valid_observations(silver: pd.DataFrame, valid: pd.DataFrame) -> pd.DataFrame:
    """The rows of silver_identifiers whose identifier stitching accepted as valid."""
    return silver.merge(valid.drop_duplicates(), on=["id_type", "id_value"], how="inner")


def evaluate(truth: pd.DataFrame, predicted: pd.DataFrame) -> dict[str, float | int]:
    """Pairwise same-person metrics over records present in both tables."""
    truth = clean_truth(truth)
    predicted = predicted.astype({"source": str, "record_id": str, "customer_id": str})
    joined = truth.merge(predicted, on=["source", "record_id"], how="inner")
    true_pairs = pairs(joined.groupby("person_id").size())
    predicted_pairs = pairs(joined.groupby("customer_id").size())
    agreeing_pairs = pairs(joined.groupby(["person_id", "customer_id"]).size())
    precision = agreeing_pairs / predicted_pairs if predicted_pairs else 1.0
    recall = agreeing_pairs / true_pairs if true_pairs else 1.0
    persons_per_customer = joined.groupby("customer_id")["person_id"].nunique()
    customers_per_person = joined.groupby("person_id")["customer_id"].nunique()
    over_merged = persons_per_customer[persons_per_customer > 1]
    over_merged_persons = joined[joined["customer_id"].isin(over_merged.index)]["person_id"].nunique()
    return {
        "truth_records": len(truth),
        "stitched_records": len(predicted),
        "records_compared": len(joined),
        "truth_records_not_stitched": len(truth) - len(joined),
        "persons": joined["person_id"].nunique(),
        "customers": joined["customer_id"].nunique(),
        "true_pairs": true_pairs,
        "predicted_pairs": predicted_pairs,
        "agreeing_pairs": agreeing_pairs,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "over_merged_customers": len(over_merged),
        "over_merged_persons": over_merged_persons,
        "split_persons": int((customers_per_person > 1).sum()),
        "largest_customer_persons": int(persons_per_customer.max()) if len(persons_per_customer) else 0,
    }


def record_components(observations: pd.DataFrame) -> pd.DataFrame:
    """key ("source\x1frecord_id"), component: records joined by every identifier they share.

    One vertex per identifier and per record; a record links to each identifier it carries.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    node, _ = pd.factorize(observations["id_type"] + "\x1f" + observations["id_value"])
    record, records = pd.factorize(observations["source"] + "\x1f" + observations["record_id"])
    n_nodes = int(node.max()) + 1 if len(node) else 0
    size = n_nodes + len(records)
    graph = coo_matrix((np.ones(len(node)), (node, n_nodes + record)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return pd.DataFrame({"key": records, "component": labels[n_nodes:]})


def linkage_ceiling(silver: pd.DataFrame, valid: pd.DataFrame) -> pd.DataFrame:
    """source, record_id, customer_id: records joined by every valid identifier they share, unguarded.

    Args:
        silver: source, record_id, id_type, id_value (silver_identifiers).
        valid: id_type, id_value of the identifiers stitching accepted as valid (shared ones included).
    """
    linked = record_components(valid_observations(silver, valid))
    linked["customer_id"] = linked.pop("component").astype(str)
    everything = silver[["source", "record_id"]].drop_duplicates()
    everything["key"] = everything["source"] + "\x1f" + everything["record_id"]
    out = everything.merge(linked, on="key", how="left")
    alone = out["customer_id"].isna()  # no valid identifier: a customer of its own
    out.loc[alone, "customer_id"] = "anon:" + out.loc[alone, "key"]
    return out[["source", "record_id", "customer_id"]]


def identifiable_records(silver: pd.DataFrame, valid: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """source, record_id of the records an identifier-based rule can attribute at all.

    A record is identifiable when it carries at least one valid identifier that, in the ground truth,
    only one person's records carry. The others carry no valid identifier (an anonymous session that
    never logs in) or only identifiers several persons share (a family tablet that one member logs in
    on while another uses it anonymously): nothing in the data says whose they are, so they bound
    precision and recall from outside the stitcher. Metrics over identifiable records only measure
    the stitcher's own decisions.
    """
    usable = valid_observations(silver, valid).merge(clean_truth(truth), on=["source", "record_id"], how="inner")
    persons = usable.groupby(["id_type", "id_value"])["person_id"].nunique().rename("persons").reset_index()
    usable = usable.merge(persons, on=["id_type", "id_value"])
    return usable.loc[usable["persons"] == 1, ["source", "record_id"]].drop_duplicates()


def linkable_recall(silver: pd.DataFrame, valid: pd.DataFrame, truth: pd.DataFrame,
                    predicted: pd.DataFrame) -> dict[str, float | int]:
    """Recall over the same-person pairs the data can link, and how many there are.

    Each person's records are joined through the valid identifiers that only this person carries in
    the truth (connected components per person); two records of one person are *linkable* when they
    fall in the same such component. Returns linkable_pairs, agreeing_linkable_pairs, recall.
    """
    usable = valid_observations(silver, valid).merge(clean_truth(truth), on=["source", "record_id"], how="inner")
    persons = usable.groupby(["id_type", "id_value"])["person_id"].nunique().rename("persons").reset_index()
    own = usable.merge(persons, on=["id_type", "id_value"])
    linkable = record_components(own[own["persons"] == 1]).rename(columns={"component": "linkable_group"})
    stitched = predicted.astype({"source": str, "record_id": str, "customer_id": str})
    stitched = stitched.assign(key=stitched["source"] + "\x1f" + stitched["record_id"])
    joined = linkable.merge(stitched[["key", "customer_id"]], on="key", how="inner")
    linkable_pairs = pairs(joined.groupby("linkable_group").size())
    agreeing = pairs(joined.groupby(["linkable_group", "customer_id"]).size())
    return {"linkable_pairs": linkable_pairs, "agreeing_linkable_pairs": agreeing,
            "recall": agreeing / linkable_pairs if linkable_pairs else 1.0}


def before_conf(target: Path) -> Path:
    """A copy of the packaged conf whose identity.yaml canonicalises as before issue 28."""
    import yaml

    from cdp.runtime.config import default_conf_dir

    shutil.copytree(default_conf_dir(), target, dirs_exist_ok=True)
    identity = yaml.safe_load((target / "identity.yaml").read_text(encoding="utf-8"))
    identity["types"]["email"]["normalizer"] = "email"
    identity["types"]["phone"]["normalizer"] = {
        "name": "phone", "default_region": "CN", "country_prefix_variants": True,
        "personal_types": ["mobile", "fixed_line", "fixed_line_or_mobile", "toll_free", "shared_cost",
                           "premium_rate", "voip", "uan", "personal_number", "pager", "voicemail"]}
    (target / "identity.yaml").write_text(yaml.safe_dump(identity, allow_unicode=True, sort_keys=False),
                                          encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", help="work folder (default: a new temp folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--reuse", action="store_true", help="reuse raw data / lake already in --workdir")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the unguarded linkage ceiling")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the lake already in --workdir as it is (e.g. one benchmarks/pipeline.py built)")
    parser.add_argument("--before", action="store_true",
                        help="also stitch with the canonicalisation of before issue 28 and compare")
    args = parser.parse_args(argv)
    if args.evaluate_only and not args.workdir:
        parser.error("--evaluate-only needs --workdir (the folder holding raw/ and lake/)")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="identity-bench-"))
    raw, lake = workdir / "raw", workdir / "lake"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark workers must use this venv
    timings = {}
    try:
        args.reuse = args.reuse or args.evaluate_only
        if not (args.reuse and (raw / "_truth" / "records.csv").exists()):
            shutil.rmtree(raw, ignore_errors=True)
            timings["generate"] = step("generate", ["--out", str(raw), "--customers", str(args.customers),
                                                    "--seed", str(args.seed)], env)
        if not (args.reuse and (lake / "silver_identifiers").exists()):
            shutil.rmtree(lake, ignore_errors=True)
            timings["land"] = step("land", ["--raw", str(raw), "--lake", str(lake)], env)
            timings["standardize"] = step("standardize", ["--lake", str(lake)], env)
        if not args.evaluate_only:
            timings["stitch"] = step("stitch", ["--lake", str(lake), "--full"], env)

        from deltalake import DeltaTable

        truth = pd.read_csv(raw / "_truth" / "records.csv", dtype=str)
        predicted = DeltaTable(str(lake / "customer_records")).to_pandas(columns=["source", "record_id", "customer_id"])
        metrics = evaluate(truth, predicted)
        quarantined = len(DeltaTable(str(lake / "identity_quarantine")).to_pandas())
        shared = DeltaTable(str(lake / "identity_map")).to_pandas(columns=["id_type", "is_shared"])
        print(f"\nidentity accuracy at --customers {args.customers} (seed {args.seed})")
        for key, value in metrics.items():
            print(f"  {key:<28} {value:.5f}" if isinstance(value, float) else f"  {key:<28} {value}")
        print(f"  {'quarantined_components':<28} {quarantined}")
        shared_by_type = shared[shared["is_shared"]].groupby("id_type").size().to_dict()
        print(f"  {'shared_identifier_rows':<28} {shared_by_type}")
        print("  timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        if not args.no_ceiling:
            started = time.perf_counter()
            silver = DeltaTable(str(lake / "silver_identifiers")).to_pandas(
                columns=["source", "record_id", "id_type", "id_value"]).astype(str)
            graph = DeltaTable(str(lake / "identity_graph")).to_pandas(
                columns=["a_type", "a_value", "b_type", "b_value"])
            valid = pd.concat([
                DeltaTable(str(lake / "identity_map")).to_pandas(columns=["id_type", "id_value"]),
                graph[["a_type", "a_value"]].set_axis(["id_type", "id_value"], axis=1),
                graph[["b_type", "b_value"]].set_axis(["id_type", "id_value"], axis=1)]).astype(str)
            ceiling = evaluate(truth, linkage_ceiling(silver, valid))
            print("  linkage ceiling (every valid identifier links, no guards): "
                  + ", ".join(f"{k} {ceiling[k]:.5f}" for k in ("precision", "recall", "f1"))
                  + f", split_persons {ceiling['split_persons']}, over_merged_customers "
                  f"{ceiling['over_merged_customers']} ({time.perf_counter() - started:.0f} s)")
            identifiable = identifiable_records(silver, valid, truth)
            keep = ["source", "record_id"]
            on_identifiable = evaluate(truth.merge(identifiable, on=keep),
                                       predicted.astype({"source": str, "record_id": str}).merge(identifiable, on=keep))
            share = len(identifiable) / max(metrics["records_compared"], 1)
            print(f"  identifiable records only ({len(identifiable)}, {share:.1%} of compared; the rest carry no "
                  "valid identifier or only identifiers several persons share): "
                  + ", ".join(f"{k} {on_identifiable[k]:.5f}" for k in ("precision", "recall", "f1"))
                  + f", over_merged_customers {on_identifiable['over_merged_customers']}, split_persons "
                  f"{on_identifiable['split_persons']}")
            linkable = linkable_recall(silver, valid, truth, predicted)
            print(f"  recall over linkable pairs ({linkable['linkable_pairs']} pairs the data links through "
                  f"identifiers only that person carries, {linkable['linkable_pairs'] / max(metrics['true_pairs'], 1):.1%} "
                  f"of true pairs): {linkable['recall']:.5f}")
        if args.before:
            plain_lake = workdir / "lake_before"
            shutil.rmtree(plain_lake, ignore_errors=True)
            conf = ["--conf", str(before_conf(workdir / "conf_before"))]
            step("land", ["--raw", str(raw), "--lake", str(plain_lake), *conf], env)
            step("standardize", ["--lake", str(plain_lake), *conf], env)
            step("stitch", ["--lake", str(plain_lake), "--full", *conf], env)
            before = evaluate(truth, DeltaTable(str(plain_lake / "customer_records")).to_pandas(
                columns=["source", "record_id", "customer_id"]))
            print("\n  canonicalisation   precision  recall     f1         over_merged_customers  split_persons")
            for name, figures in (("before (#28)", before), ("now", metrics)):
                print(f"  {name:<18} {figures['precision']:.5f}    {figures['recall']:.5f}    {figures['f1']:.5f}    "
                      f"{figures['over_merged_customers']:<22} {figures['split_persons']}")
        goal = metrics["precision"] >= 0.999 and metrics["recall"] >= 0.99
        print(f"  goal precision >= 0.999 and recall >= 0.99: {'met' if goal else 'NOT met'}")
        return 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
