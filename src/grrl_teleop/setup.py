from glob import glob

from setuptools import find_packages, setup

package_name = "grrl_teleop"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="grrl maintainers",
    maintainer_email="grrl@example.com",
    description="Teleop relay with retry-keyframe labelling and per-episode recorder.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "teleop_node = grrl_teleop.teleop_node:main",
            "recorder_node = grrl_teleop.recorder_node:main",
        ],
    },
)
