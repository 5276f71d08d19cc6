"""ECR specifics that a push must check before sending gigabytes.

Why: ECR does not create repositories on push (without a repository creation template); pushing to a
missing one ends in an abruptly closed connection mid-upload, which looks like a network fault. So
before a push to an ECR host the three stage repositories are looked up with `DescribeRepositories`
(boto3, the default credential chain) and a missing one is named with the command that creates it.
"""
from __future__ import annotations

from .auth import ECR_HOST, AuthError


def missing_repositories(host: str, repos: list[str]) -> list[str]:
    """The repositories of `repos` that do not exist in the ECR registry `host` ([] for other hosts)."""
    m = ECR_HOST.match(host)
    if not m:
        return []
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    ecr = boto3.client("ecr", region_name=m["region"])
    missing = []
    for repo in repos:
        try:
            ecr.describe_repositories(registryId=m["account"], repositoryNames=[repo])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "RepositoryNotFoundException":
                missing.append(repo)
                continue
            raise AuthError(f"ECR DescribeRepositories for {host}/{repo} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise AuthError(f"ECR DescribeRepositories for {host}/{repo} failed: {exc}") from exc
    return missing


def require_repositories(host: str, repos: list[str]) -> None:
    missing = missing_repositories(host, repos)
    if missing:
        m = ECR_HOST.match(host)
        region = m["region"] if m else "?"
        raise AuthError(f"ECR repository {', '.join(missing)} does not exist in {host} (ECR does not create "
                        f"repositories on push): create it with `aws ecr create-repository --region {region} "
                        f"--repository-name {missing[0]}`" + (" (and the others)" if len(missing) > 1 else ""))
