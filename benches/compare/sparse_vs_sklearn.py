"""kiln's logistic regression on sparse one-hot rows against scikit-learn's LogisticRegression and
SGDClassifier on the same sparse one-hot matrix, on synthetic click-through rows.

    python3 -m venv /var/tmp/kiln-bench
    /var/tmp/kiln-bench/bin/pip install scikit-learn==1.9.1 pandas
    cargo build --release
    /var/tmp/kiln-bench/bin/python benches/compare/sparse_vs_sklearn.py [ROWS] [KILN]

Features as kiln's spec below builds them: i1..i8 median-imputed and standardized, c2..c5 one-hot
over the values seen at least 10 times in the training split, with one out-of-vocabulary column
each. The same split as kiln's (the last 20% of rows for test, the last 10% of the rest for
validation, which scikit-learn does not use). kiln's time is end to end (reading the CSV,
statistics, fitting the transform, training, writing the bundle); scikit-learn's is the fit.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import roc_auc_score

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
KILN = sys.argv[2] if len(sys.argv) > 2 else "target/release/kiln"
NUMERIC = [f"i{i}" for i in range(1, 9)]
CATEGORIES = ["c2", "c3", "c4", "c5"]
SPEC = f"""
[[features]]
columns = {json.dumps(NUMERIC)}
impute = "median"
encode = "standardize"

[[features]]
columns = {json.dumps(CATEGORIES)}
encode = "vocabulary"
min_frequency = 10
"""

work = tempfile.mkdtemp()
data = os.path.join(work, "ctr.csv")
spec = os.path.join(work, "spec.toml")
open(spec, "w").write(SPEC)
subprocess.run([KILN, "data", "synth", "ctr", "--rows", str(ROWS), "--seed", "1", "-o", data],
               check=True, capture_output=True)

start = time.perf_counter()
out = subprocess.run(
    [KILN, "--home", os.path.join(work, "home"), "train", "--data", data, "--target", "click",
     "--spec", spec, "--json"],
    check=True, capture_output=True, text=True)
kiln_seconds = time.perf_counter() - start
kiln = json.loads(out.stdout)

frame = pd.read_csv(data, keep_default_na=True)
y = frame.pop("click").to_numpy()
n_test = round(ROWS * 0.2)
n_trainval = ROWS - n_test
n_train = n_trainval - round(n_trainval * 0.1)
train, test = frame.iloc[:n_train], frame.iloc[n_trainval:]
blocks_train, blocks_test = [], []
numbers = train[NUMERIC].to_numpy(dtype=float)
median = np.nanmedian(numbers, axis=0)
def standardize(x):
    x = np.where(np.isnan(x), median, x)
    return x
filled = standardize(numbers)
mean, std = filled.mean(axis=0), filled.std(axis=0)
std[std == 0] = 1
blocks_train.append(sp.csr_matrix((filled - mean) / std))
blocks_test.append(sp.csr_matrix((standardize(test[NUMERIC].to_numpy(dtype=float)) - mean) / std))
width = len(NUMERIC)
for c in CATEGORIES:
    counts = train[c].value_counts()
    vocab = {v: i for i, v in enumerate(counts[counts >= 10].index)}
    oov = len(vocab)
    for part, blocks in ((train, blocks_train), (test, blocks_test)):
        ids = part[c].map(vocab).fillna(oov).astype(int).to_numpy()
        rows = np.arange(len(ids))
        blocks.append(sp.csr_matrix((np.ones(len(ids)), (rows, ids)), shape=(len(ids), oov + 1)))
    width += oov + 1
x_train, x_test = sp.hstack(blocks_train).tocsr(), sp.hstack(blocks_test).tocsr()
y_train, y_test = y[:n_train], y[n_trainval:]

results = [("kiln logistic (end to end, CLI)", kiln_seconds, kiln["test_metrics"]["roc_auc"])]
for name, model in [
    ("LogisticRegression (fit)", LogisticRegression(max_iter=1000)),
    ("SGDClassifier log_loss (fit)", SGDClassifier(loss="log_loss", random_state=0)),
]:
    start = time.perf_counter()
    model.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    scores = model.decision_function(x_test)
    results.append((name, seconds, roc_auc_score(y_test, scores)))

print(f"{ROWS} rows, {width} one-hot and numeric columns")
print(f"{'':34}{'seconds':>10}{'test AUC':>10}")
for name, seconds, auc in results:
    print(f"{name:34}{seconds:10.1f}{auc:10.4f}")
