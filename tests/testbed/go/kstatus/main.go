// Command kstatus reads one Kubernetes object, as YAML or JSON, on standard
// input and prints its kstatus as one line of JSON:
//
//	{"status": "InProgress", "message": "..."}
//
// The status is what status.Compute of sigs.k8s.io/cli-utils/pkg/kstatus
// returns (InProgress, Current, Failed, Terminating, NotFound, Unknown): the
// same verdict Flux's health checks and kpt give. It exits 1, with the reason
// on standard error, when the input is not an object or kstatus cannot judge it.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	raw, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading standard input: %w", err)
	}
	// YAML is a superset of JSON, so one conversion reads both.
	doc, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	// Unstructured's own decoder keeps integers as int64, as kstatus expects.
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(doc); err != nil {
		return fmt.Errorf("standard input holds no object: %w", err)
	}
	result, err := status.Compute(obj)
	if err != nil {
		return fmt.Errorf("computing the status: %w", err)
	}
	return json.NewEncoder(out).Encode(verdict{
		Status:  result.Status.String(),
		Message: result.Message,
	})
}
