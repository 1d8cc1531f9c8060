// kstatus reads Kubernetes objects as JSON on stdin (one object, a JSON array of objects, or a
// List) and prints, one JSON line per object, the verdict of kstatus (sigs.k8s.io/cli-utils
// pkg/kstatus/status): the library Flux's health checks and kpt use. glowplug's tests run it on
// the ModelServer statuses the operator writes.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(2)
	}
	var objects []map[string]interface{}
	// utiljson keeps integers int64, as the API machinery reads them (not float64).
	if err := utiljson.Unmarshal(raw, &objects); err != nil {
		var one map[string]interface{}
		if err := utiljson.Unmarshal(raw, &one); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: not a JSON object or array:", err)
			os.Exit(2)
		}
		if items, ok := one["items"].([]interface{}); ok {
			for _, item := range items {
				if m, ok := item.(map[string]interface{}); ok {
					objects = append(objects, m)
				}
			}
		} else {
			objects = append(objects, one)
		}
	}
	out := json.NewEncoder(os.Stdout)
	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object}
		v := verdict{Name: u.GetName()}
		result, err := status.Compute(u)
		if err != nil {
			v.Error = err.Error()
		} else {
			v.Status, v.Message = result.Status.String(), result.Message
		}
		if err := out.Encode(v); err != nil {
			os.Exit(2)
		}
	}
}
