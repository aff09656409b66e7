from glob import glob

from setuptools import find_packages, setup

package_name = "grrl_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="grrl maintainers",
    maintainer_email="grrl@example.com",
    description="Node list, launch files, parameter files, the grrl CLI and composed runner.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "grrl = grrl_bringup.cli:main",
            "interface_responder = grrl_bringup.interface_check_nodes:responder_main",
            "interface_prober = grrl_bringup.interface_check_nodes:prober_main",
        ],
    },
)
