from setuptools import setup

setup(
    name="guided-diffusion",
    version="0.1.0",
    description="ADM / ADM-G (Diffusion Models Beat GANs on Image Synthesis) in PyTorch: models, training, "
    "sampling and TensorFlow-free evaluation",
    packages=["guided_diffusion", "guided_diffusion.clip", "guided_diffusion.distill", "guided_diffusion.editing",
              "guided_diffusion.text", "evaluations"],
    package_data={"guided_diffusion.text": ["gpt2_bpe/*.gz", "gpt2_bpe/README.md"],
                  "guided_diffusion.clip": ["clip_bpe/*.gz", "clip_bpe/README.md"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.1", "numpy", "scipy", "pillow", "tqdm", "blobfile", "safetensors", "tiktoken",
                      "ftfy", "regex"],
    extras_require={"mpi": ["mpi4py", "mpich"], "test": ["pytest", "diffusers"]},
)
