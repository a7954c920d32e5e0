from setuptools import find_packages, setup

setup(
    name="tevatron",
    version="1.0.0",
    description="Dense retrieval toolkit for MS MARCO passage ranking: train, encode, search, mine, evaluate",
    packages=find_packages(include=["tevatron", "tevatron.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "transformers>=4.45",
        "datasets>=2.19",
        "accelerate>=0.26",
        "faiss-cpu>=1.8",
        "numpy>=1.24",
        "tqdm",
        "bm25s>=0.2",
        "PyStemmer>=2.2",
        "peft>=0.14",  # LoRA adapters (--lora); exclude_modules needs 0.14
    ],
    # ir_measures: only the metric parity tests use it; the library does not import it.
    # sentence-transformers: only tevatron.export (imported there when exporting) and its tests
    extras_require={"test": ["pytest", "hypothesis", "ir_measures>=0.3", "sentence-transformers>=3", "pytest-xdist"]},
)
