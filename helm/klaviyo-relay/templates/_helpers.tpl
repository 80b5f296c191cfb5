{{/* Chart name. */}}
{{- define "klaviyo-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "klaviyo-relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "klaviyo-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "klaviyo-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "klaviyo-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "klaviyo-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: relay
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "klaviyo-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "klaviyo-relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "klaviyo-relay.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key holding the Klaviyo API key. */}}
{{- define "klaviyo-relay.klaviyoSecretName" -}}
{{- default (printf "%s-klaviyo" (include "klaviyo-relay.fullname" .)) .Values.klaviyo.existingSecret -}}
{{- end -}}

{{/* The Secret the relay keeps rotated OAuth refresh tokens in (klaviyo.oauth.tokenStore). */}}
{{- define "klaviyo-relay.oauthTokenSecretName" -}}
{{- printf "%s-oauth-token" (include "klaviyo-relay.fullname" .) -}}
{{- end -}}

{{/* "true" when the pods need the API server: OAuth with the token store Secret (of the
top-level OAuth set-up or of any OAuth account). */}}
{{- define "klaviyo-relay.oauthTokenStore" -}}
{{- if (include "klaviyo-relay.oauthTokenStores" . | fromJsonArray) }}true{{ end -}}
{{- end -}}

{{- define "klaviyo-relay.autoscaling" -}}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled -}}
{{- fail "autoscaling.hpa.enabled and autoscaling.keda.enabled are exclusive: enable one" -}}
{{- end -}}
{{- if or .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled }}true{{ end -}}
{{- end -}}

{{/*
The worst-case shutdown: the drain (relay.drainTimeoutSeconds), then the final commit (5 s),
leaving the group and closing the consumer (10 s) and flushing dead letters (5 s); the default
adds 5 s for the process to exit. Keep in step with consumer/pipeline/source.py and relay.py.
*/}}
{{- define "klaviyo-relay.terminationGracePeriodSeconds" -}}
{{- $drain := ceil .Values.relay.drainTimeoutSeconds | int -}}
{{- $worst := add $drain 20 -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $worst -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed relay.drainTimeoutSeconds + 20 (%v): the drain, final commit, consumer close and dead-letter flush" .Values.terminationGracePeriodSeconds $worst) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $worst 5 -}}
{{- end -}}
{{- end -}}

{{/* PromQL label matchers that scope alerts to this release's scrape job. */}}
{{- define "klaviyo-relay.promSelector" -}}
namespace="{{ .Release.Namespace }}", job="{{ include "klaviyo-relay.fullname" . }}-metrics"
{{- end -}}

{{- define "klaviyo-relay.kafkaTlsDir" -}}/etc/klaviyo-relay/kafka-tls{{- end -}}

{{/* The Secret the chart creates for secret settings other than the Klaviyo key. */}}
{{- define "klaviyo-relay.settingsSecretName" -}}
{{- printf "%s-settings" (include "klaviyo-relay.fullname" .) -}}
{{- end -}}

{{/* Secret settings given as values, by their key in that Secret; empty when there are none. */}}
{{- define "klaviyo-relay.settingsSecretData" -}}
{{- $data := dict -}}
{{- $auth := .Values.schemaRegistry.auth -}}
{{- if and (ne $auth.type "none") $auth.credential (not $auth.existingSecret) -}}
{{- $_ := set $data "schema-registry-credential" $auth.credential -}}
{{- end -}}
{{- if and .Values.kafka.secretExtraConfig (not .Values.kafka.secretExtraConfigExistingSecret) -}}
{{- $_ := set $data "kafka-secret-extra-config" (toJson .Values.kafka.secretExtraConfig) -}}
{{- end -}}
{{- if $data }}{{ toJson $data }}{{ end -}}
{{- end -}}

{{/* An account's environment variable prefix, KLAVIYO_ACCOUNT_<NAME>_ (name upper-cased, - as _). */}}
{{- define "klaviyo-relay.accountEnvPrefix" -}}
{{- printf "KLAVIYO_ACCOUNT_%s_" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/* The token-store Secret of the account named by .name (root: the chart's context). */}}
{{- define "klaviyo-relay.accountTokenSecretName" -}}
{{- printf "%s-%s" (include "klaviyo-relay.oauthTokenSecretName" .root) .name -}}
{{- end -}}

{{/* The accounts that send with OAuth (authScheme oauth), as a JSON list. */}}
{{- define "klaviyo-relay.oauthAccounts" -}}
{{- $found := list -}}
{{- range .Values.accounts -}}
{{- if eq (default "api-key" .authScheme) "oauth" -}}
{{- $found = append $found . -}}
{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* Every token-store Secret the relay patches, as a JSON list of names: the top-level OAuth
set-up's and one per OAuth account (each installation rotates its own refresh token). */}}
{{- define "klaviyo-relay.oauthTokenStores" -}}
{{- $names := list -}}
{{- if .Values.klaviyo.oauth.tokenStore.enabled -}}
{{- if .Values.klaviyo.oauth.enabled -}}
{{- $names = append $names (include "klaviyo-relay.oauthTokenSecretName" .) -}}
{{- end -}}
{{- range (include "klaviyo-relay.oauthAccounts" . | fromJsonArray) -}}
{{- $names = append $names (include "klaviyo-relay.accountTokenSecretName" (dict "root" $ "name" .name)) -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* "true" when the top-level klaviyo.* credentials are rendered (the account `default`):
always without accounts (the pods then expect <fullname>-klaviyo), with accounts only when a key
or OAuth is configured there. */}}
{{- define "klaviyo-relay.topLevelCredentials" -}}
{{- $k := .Values.klaviyo -}}
{{- if or (not .Values.accounts) $k.apiKey $k.existingSecret $k.oauth.enabled }}true{{ end -}}
{{- end -}}

{{/* The topic → account map (KLAVIYO_ACCOUNT_TOPICS) from the accounts' topics, as JSON; a
topic given to two accounts fails the install. */}}
{{- define "klaviyo-relay.accountTopics" -}}
{{- $map := dict -}}
{{- range .Values.accounts -}}
{{- $account := .name -}}
{{- range .topics -}}
{{- if hasKey $map . -}}
{{- fail (printf "accounts: topic %s is given to both %s and %s" . (get $map .) $account) -}}
{{- end -}}
{{- $_ := set $map . $account -}}
{{- end -}}
{{- end -}}
{{- toJson $map -}}
{{- end -}}
