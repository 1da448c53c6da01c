package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// outputFlag registers -o on a read command: table (the default), wide
// (more columns), yaml or json, the formats kubectl users type.
func outputFlag(cmd *cobra.Command) *string {
	o := cmd.Flags().StringP("output", "o", "table", "output format: table, wide, yaml or json")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "wide", "yaml", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return o
}

func checkOutput(o string) error {
	switch o {
	case "table", "wide", "yaml", "json":
		return nil
	}
	return fmt.Errorf("-o %q: want table, wide, yaml or json", o)
}

// render writes v as JSON or YAML, or calls table (wide for -o wide).
func render(w io.Writer, format string, v any, table func(w io.Writer, wide bool)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	table(w, format == "wide")
	return nil
}
