"""tfcaption: installable package; `tfcaption` is its command line."""

from setuptools import find_packages, setup

# One release line, pinned: TF 2.21 with its matching tensorflow-text, Keras 3
# and tensorflow-datasets. A mismatched tensorflow-text fails to load its ops.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "keras==3.15.1",
    "numpy==2.4.6",
    "matplotlib==3.11.2",
    "pillow==13.0.0",
    "h5py==3.14.0",
    "tensorboard==2.21.0",
    "pycocoevalcap==1.2",
]

setup(
    name="tfcaption",
    version="0.1.0",
    description="Show, Attend and Tell image captioning: tf.data feature cache, "
    "GRU + Bahdanau attention, in-graph beam search, SavedModel export",
    packages=find_packages(include=["tfcaption", "tfcaption.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    # xdist: the suite runs in two processes (pytest.ini), a file per process.
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0"]},
    entry_points={"console_scripts": ["tfcaption = tfcaption.cli:main"]},
)
