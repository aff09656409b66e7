from glob import glob

from setuptools import find_packages, setup

package_name = "grrl_sim"

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
    description="MuJoCo bimanual robot behind the real robot's topics; scripted operator.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_node = grrl_sim.sim_node:main",
            "episode_runner = grrl_sim.runner_node:main",
        ],
    },
)
