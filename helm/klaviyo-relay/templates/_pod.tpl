{{/*
The relay's pod template, shared by the Deployment and the CronJob (mode: cronjob), so both run
with the same settings, secrets, volumes and security context. Called with a dict: root (the
chart's context) and job (true for the CronJob: `run --until-caught-up`, restartPolicy Never,
no readiness probe).
*/}}
{{- define "klaviyo-relay.podTemplate" -}}
{{- $root := .root -}}
{{- $job := .job -}}
{{- $tls := $root.Values.kafka.tls -}}
{{- $sasl := $root.Values.kafka.sasl -}}
{{- $registryAuth := $root.Values.schemaRegistry.auth -}}
metadata:
  labels:
    {{- include "klaviyo-relay.labels" $root | nindent 4 }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when settings or the chart-managed key change.
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "klaviyo-relay.serviceAccountName" $root }}
  # Only the OAuth token store talks to the API server (one Secret, see its Role).
  automountServiceAccountToken: {{ include "klaviyo-relay.oauthTokenStore" $root | eq "true" }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Longer than the relay's drain so in-flight events finish and offsets are committed.
  terminationGracePeriodSeconds: {{ include "klaviyo-relay.terminationGracePeriodSeconds" $root }}
  {{- if $job }}
  # A run that fails is reported by its Job; the next scheduled run starts afresh.
  restartPolicy: Never
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: relay
      image: {{ include "klaviyo-relay.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if $job }}
      args: ["run", "--until-caught-up", "--max-duration", {{ $root.Values.cronjob.maxDurationSeconds | quote }}]
      {{- else }}
      args: ["run"]
      {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "klaviyo-relay.fullname" $root }}
      env:
        {{- if include "klaviyo-relay.topLevelCredentials" $root }}
        {{- with $root.Values.klaviyo.oauth }}
        {{- if .enabled }}
        {{- if not (and .clientId .existingSecret) }}
        {{- fail "klaviyo.oauth.enabled needs klaviyo.oauth.clientId and klaviyo.oauth.existingSecret" }}
        {{- end }}
        - name: KLAVIYO_OAUTH_CLIENT_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ .existingSecret }}
              key: {{ .clientSecretKey }}
        - name: KLAVIYO_OAUTH_REFRESH_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .existingSecret }}
              key: {{ .refreshTokenKey }}
        {{- else }}
        - name: KLAVIYO_API_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "klaviyo-relay.klaviyoSecretName" $root }}
              key: {{ $root.Values.klaviyo.existingSecretKey }}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- range $root.Values.accounts }}
        {{- $prefix := include "klaviyo-relay.accountEnvPrefix" .name }}
        {{- $secret := .existingSecret }}
        {{- /* Each account's credentials from its own Secret, by fixed keys (values.yaml). */}}
        {{- $keys := dict "API_KEY" "api-key" }}
        {{- if eq (default "api-key" .authScheme) "oauth" }}
        {{- $keys = dict "OAUTH_CLIENT_ID" "oauth-client-id" "OAUTH_CLIENT_SECRET" "oauth-client-secret" "OAUTH_REFRESH_TOKEN" "oauth-refresh-token" }}
        {{- end }}
        {{- range $field, $key := $keys }}
        - name: {{ $prefix }}{{ $field }}
          valueFrom:
            secretKeyRef:
              name: {{ $secret }}
              key: {{ $key }}
        {{- end }}
        {{- end }}
        {{- if $sasl.existingSecret }}
        - name: KAFKA_SASL_USERNAME
          valueFrom:
            secretKeyRef:
              name: {{ $sasl.existingSecret }}
              key: {{ $sasl.usernameKey }}
        - name: KAFKA_SASL_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ $sasl.existingSecret }}
              key: {{ $sasl.passwordKey }}
        {{- end }}
        {{- if ne $registryAuth.type "none" }}
        - name: {{ ternary "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO" "SCHEMA_REGISTRY_BEARER_TOKEN" (eq $registryAuth.type "basic") }}
          valueFrom:
            secretKeyRef:
              {{- if $registryAuth.existingSecret }}
              name: {{ $registryAuth.existingSecret }}
              key: {{ $registryAuth.existingSecretKey }}
              {{- else }}
              name: {{ include "klaviyo-relay.settingsSecretName" $root }}
              key: schema-registry-credential
              {{- end }}
        {{- end }}
        {{- if or $root.Values.kafka.secretExtraConfig $root.Values.kafka.secretExtraConfigExistingSecret }}
        - name: KAFKA_SECRET_EXTRA_CONFIG
          valueFrom:
            secretKeyRef:
              {{- with $root.Values.kafka.secretExtraConfigExistingSecret }}
              name: {{ . }}
              key: {{ $root.Values.kafka.secretExtraConfigKey }}
              {{- else }}
              name: {{ include "klaviyo-relay.settingsSecretName" $root }}
              key: kafka-secret-extra-config
              {{- end }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ $root.Values.metrics.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
        failureThreshold: {{ $root.Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
      {{- if not $job }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
      {{- end }}
      resources:
        {{- toYaml $root.Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $tls.existingSecret }}
        - name: kafka-tls
          mountPath: {{ include "klaviyo-relay.kafkaTlsDir" $root }}
          readOnly: true
        {{- end }}
  volumes:
    # The root filesystem is read-only; Python and librdkafka may still want a scratch dir.
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if $tls.existingSecret }}
    - name: kafka-tls
      secret:
        secretName: {{ $tls.existingSecret }}
        defaultMode: 0440
    {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  topologySpreadConstraints:
    {{- if $root.Values.topologySpreadConstraints }}
    {{- toYaml $root.Values.topologySpreadConstraints | nindent 4 }}
    {{- else }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "klaviyo-relay.selectorLabels" $root | nindent 10 }}
    {{- end }}
{{- end -}}
