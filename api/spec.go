package api

import (
	"encoding/json"
	"fmt"
	"sync"

	yaml "go.yaml.in/yaml/v4"
)

// SpecJSON returns the OpenAPI document as JSON (GET /spec.json), converted
// once from openapi.yaml, the source.
func SpecJSON() ([]byte, error) { return specJSON() }

var specJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(specYAML, &doc); err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml as JSON: %w", err)
	}
	return raw, nil
})
