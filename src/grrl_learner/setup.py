from setuptools import find_packages, setup

package_name = "grrl_learner"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "learner_node = grrl_learner.learner_node:main",
            "replay_node = grrl_learner.replay:main",
        ],
    },
    maintainer="grrl maintainers",
    maintainer_email="grrl@example.com",
    description="Progress critic, filtering, mirroring, BC and online noise-space RL.",
    license="Apache-2.0",
)
