from setuptools import find_packages, setup

package_name = "grrl_policy"

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
            "policy_node = grrl_policy.policy_node:main",
            "smoother_node = grrl_policy.smoother_node:main",
        ],
    },
    maintainer="grrl maintainers",
    maintainer_email="grrl@example.com",
    description="Flow-matching VLA policy, inference and the deployment chunk smoother.",
    license="Apache-2.0",
)
