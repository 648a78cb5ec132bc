"""kiln's gradient-boosted trees against LightGBM and scikit-learn's HistGradientBoosting on
synthetic click-through rows, with the same split, trees, leaves, learning rate and threads.

    python3 -m venv /var/tmp/kiln-bench
    /var/tmp/kiln-bench/bin/pip install lightgbm==4.7.0 scikit-learn==1.9.1 pandas
    cargo build --release
    /var/tmp/kiln-bench/bin/python benches/compare/gbdt_vs_lightgbm.py [ROWS] [KILN]

kiln holds out the last 20% of rows as the test set and the last 10% of the rest for
validation; the other libraries train on the same training rows and are scored on the same test
rows. Early stopping is off everywhere, so each builds exactly 100 trees.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import lightgbm
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
KILN = sys.argv[2] if len(sys.argv) > 2 else "target/release/kiln"
THREADS = os.cpu_count() or 1
TREES, LEAVES, LR = 100, 31, 0.1

work = tempfile.mkdtemp()
data = os.path.join(work, "ctr.csv")
subprocess.run([KILN, "data", "synth", "ctr", "--rows", str(ROWS), "--seed", "1", "-o", data],
               check=True, capture_output=True)

def kiln_train(trees, home):
    start = time.perf_counter()
    out = subprocess.run(
        [KILN, "--home", os.path.join(work, home), "train", "--data", data, "--target", "click",
         "--model", "gbdt", "--trees", str(trees), "--leaves", str(LEAVES), "--lr", str(LR),
         "--patience", "0", "--json"],
        check=True, capture_output=True, text=True)
    return time.perf_counter() - start, json.loads(out.stdout)


# What kiln does besides boosting (reading the CSV, statistics, the transform, the bundle and
# the registry) is measured as a run of one tree, and taken off for the boosting alone.
fixed_seconds, _ = kiln_train(1, "home1")
kiln_seconds, kiln = kiln_train(TREES, "home")
print(f"kiln: {kiln_seconds:.1f} s, test AUC {kiln['test_metrics']['roc_auc']:.4f}", flush=True)

start = time.perf_counter()
frame = pd.read_csv(data)
read_seconds = time.perf_counter() - start
y = frame.pop("click").to_numpy()
categorical = [c for c in frame.columns if c.startswith("c")]
for c in categorical:
    frame[c] = frame[c].astype("category")
n_test = round(ROWS * 0.2)
n_trainval = ROWS - n_test
n_train = n_trainval - round(n_trainval * 0.1)
x_train, y_train = frame.iloc[:n_train], y[:n_train]
x_test, y_test = frame.iloc[n_trainval:], y[n_trainval:]

start = time.perf_counter()
lgb = lightgbm.LGBMClassifier(n_estimators=TREES, num_leaves=LEAVES, learning_rate=LR,
                              n_jobs=THREADS, verbose=-1)
lgb.fit(x_train, y_train, categorical_feature=categorical)
lgb_seconds = time.perf_counter() - start
lgb_auc = roc_auc_score(y_test, lgb.predict_proba(x_test)[:, 1])
print(f"LightGBM: {lgb_seconds:.1f} s, test AUC {lgb_auc:.4f}", flush=True)

# HistGradientBoosting takes at most 255 categories per column: the 254 commonest, then the rest.
coded = frame.copy()
for c in categorical:
    top = coded[c].iloc[:n_train].value_counts().index[:254]
    text = coded[c].astype(str)
    coded[c] = pd.Categorical(text.where(text.isin(top.astype(str)), "<rest>"))
start = time.perf_counter()
hgb = HistGradientBoostingClassifier(max_iter=TREES, max_leaf_nodes=LEAVES, learning_rate=LR,
                                     early_stopping=False, categorical_features="from_dtype")
hgb.fit(coded.iloc[:n_train], y_train)
hgb_seconds = time.perf_counter() - start
hgb_auc = roc_auc_score(y_test, hgb.predict_proba(coded.iloc[n_trainval:])[:, 1])

print(f"{ROWS} rows, {TREES} trees of {LEAVES} leaves, learning rate {LR}, {THREADS} threads")
print(f"{'':36}{'seconds':>10}{'test AUC':>10}{'time vs LightGBM':>18}")
auc = kiln["test_metrics"]["roc_auc"]
for name, seconds, auc, base in [
    ("kiln, end to end (CLI)", kiln_seconds, auc, lgb_seconds + read_seconds),
    ("LightGBM, pandas read_csv + fit", lgb_seconds + read_seconds, lgb_auc, None),
    ("kiln, boosting (less a 1-tree run)", kiln_seconds - fixed_seconds, auc, lgb_seconds),
    ("LightGBM, fit", lgb_seconds, lgb_auc, None),
    ("HistGradientBoosting, fit", hgb_seconds, hgb_auc, lgb_seconds),
]:
    ratio = f"{seconds / base:17.2f}x" if base else ""
    print(f"{name:36}{seconds:10.1f}{auc:10.4f}{ratio}")
