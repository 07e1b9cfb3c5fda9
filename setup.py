from setuptools import find_packages, setup

setup(
    name="sertk",
    version="0.1.0",
    description="Speech emotion recognition toolkit: recipes and one shared library",
    packages=find_packages(include=["sertk", "sertk.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch", "torchaudio", "transformers", "speechbrain", "opensmile", "audresample",
        "sentencepiece", "soundfile", "pyyaml", "numpy", "scipy",
        "scikit-learn", "kaldiio", "onnx", "onnxruntime", "timm", "peft",
        "matplotlib", "tqdm", "safetensors",
    ],
    entry_points={"console_scripts": ["sertk=sertk.cli:main"]},
)
