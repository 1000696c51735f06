#!/usr/bin/env bash
# Regenerates Sources/FlagdEvaluationAPI/Generated from flagd's evaluation schemas.
#
# Usage: tools/generate-flagd-grpc.sh SCHEMAS
#   SCHEMAS  a checkout of open-feature/flagd-schemas (a work tree, or a git directory whose HEAD is read)
#            (or set FLAGD_SCHEMAS instead of passing it)
#
# Needs protoc (Debian: protobuf-compiler). Builds protoc-gen-swift (swift-protobuf) and
# protoc-gen-grpc-swift-2 (grpc-swift-protobuf) once, at the versions Package.swift names, in .build-protoc/
# (ignored by git; the first build takes about ten minutes), then runs protoc. The generated Swift is committed,
# so neither a build nor CI needs protoc or the plugins. The .proto files themselves are not committed.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
schemas="${1:-${FLAGD_SCHEMAS:-}}"
if [ -z "$schemas" ]; then
    echo "usage: $0 PATH-TO-flagd-schemas" >&2
    exit 2
fi
command -v protoc >/dev/null || { echo "protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }

work="$root/.build-protoc"
plugins="$work/plugins"
mkdir -p "$plugins/Sources/Placeholder" "$work/proto"

# A scratch package whose only purpose is to build the two code generators at the project's versions.
cat >"$plugins/Package.swift" <<'SWIFT'
// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "FlagdCodeGenerators",
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    ],
    targets: [
        .target(
            name: "Placeholder",
            dependencies: [
                .product(name: "protoc-gen-swift", package: "swift-protobuf"),
                .product(name: "protoc-gen-grpc-swift-2", package: "grpc-swift-protobuf"),
            ]
        )
    ]
)
SWIFT
echo "// Only here so that the package has a target that depends on the generators." \
    >"$plugins/Sources/Placeholder/Placeholder.swift"

(cd "$plugins" && swift build --product protoc-gen-swift && swift build --product protoc-gen-grpc-swift-2)
bin="$(cd "$plugins" && swift build --show-bin-path)"

# Copy the schemas out of a work tree or a git directory.
for version in v1 v2; do
    mkdir -p "$work/proto/flagd/evaluation/$version"
    source="protobuf/flagd/evaluation/$version/evaluation.proto"
    if [ -f "$schemas/$source" ]; then
        cp "$schemas/$source" "$work/proto/flagd/evaluation/$version/evaluation.proto"
    else
        git -C "$schemas" show "HEAD:$source" >"$work/proto/flagd/evaluation/$version/evaluation.proto"
    fi
done

out="$root/Sources/FlagdEvaluationAPI/Generated"
rm -rf "$out"
mkdir -p "$out"
protoc \
    --proto_path="$work/proto" \
    --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
    --plugin=protoc-gen-grpc-swift-2="$bin/protoc-gen-grpc-swift-2" \
    --swift_opt=Visibility=Public,FileNaming=PathToUnderscores \
    --swift_out="$out" \
    --grpc-swift-2_opt=Visibility=Public,FileNaming=PathToUnderscores,Client=true,Server=true \
    --grpc-swift-2_out="$out" \
    flagd/evaluation/v1/evaluation.proto flagd/evaluation/v2/evaluation.proto
echo "generated:"
ls -1 "$out"
