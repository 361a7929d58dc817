//go:build tools

// Package tools records the commands the test bed builds from this module.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
