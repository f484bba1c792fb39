"""Open-source Customer Data Platform: a suite of PySpark jobs."""
from __future__ import annotations

from setuptools import find_packages, setup

# Versions verified to resolve together (see README "Versions").
CORE = [
    "pyspark==4.2.0",
    # = the delta-spark jar of jars/pom.xml: 4.4.1 is on PyPI but its jar is not served on Maven
    # Central; 4.4.0's Python package differs only in its version string and takes pyspark 4.2.0
    "delta-spark==4.4.0",
    "deltalake==1.6.6",
    "great-expectations==1.24.1",
    "mlflow==3.17.2",
    "graphframes-py==0.12.3",
    "pyyaml>=6,<7",
    "pandas>=2.2,<3",
    "pyarrow>=15",
    "numpy>=1.26",
    "phonenumbers>=8.13",
    "scikit-learn>=1.5",
    "scipy>=1.11",
    "sqlglot>=25",  # cdp validate parses tag and audience SQL without starting Spark
    "matplotlib>=3.8",
    "jinja2>=3.1",  # the run report's HTML templates
]
# Spark Connect client (`--remote sc://...` / SPARK_REMOTE): gRPC and friends, pinned with pyspark.
CONNECT = ["pyspark[connect]==4.2.0"]
TEST = CONNECT + [
    "pytest>=8",
    "wheel>=0.43",  # tests build the wheel (one top-level package)
    "ruff>=0.6",
    "import-linter>=2.1",
    "hypothesis>=6",
    "chispa>=0.10",
    "duckdb==1.4.4",  # the delta extension below is built for exactly this DuckDB
    "duckdb-ext-delta==1.4.4.20260205",  # DuckDB's delta reader, shipped offline
    "nbmake>=1.5",
    "ipykernel>=6",
    "lifetimes==0.11.3",
]
NOTEBOOKS = ["jupyterlab>=4", "papermill>=2.6", "ipykernel>=6"]

setup(
    name="cdp-spark",
    version="0.2.0",
    description="Customer Data Platform as PySpark jobs: land, identity, tags, audiences",
    python_requires=">=3.10",
    # One top-level package: everything installs under cdp (src/ layout, so tests import the installed
    # package, never the checkout by accident). conf/ stays a top-level folder users edit and ships
    # inside the wheel as cdp.conf, the default when --conf is not given.
    package_dir={"": "src", "cdp.conf": "conf"},
    packages=find_packages("src", include=["cdp", "cdp.*"]) + ["cdp.conf"],
    package_data={"": ["py.typed"], "cdp.conf": ["*.yaml", "*/*.yaml"], "cdp.report": ["templates/*"]},
    install_requires=CORE,
    extras_require={"test": TEST, "notebooks": NOTEBOOKS, "connect": CONNECT},
    entry_points={"console_scripts": ["cdp=cdp.jobs.cli:main"]},
)
