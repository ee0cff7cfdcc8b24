// Used only by `STACK_SECURE=1 scripts/stack up`: waits until the secured broker answers
// the admin principal, then creates the ACLs of the service principal and the saga's
// topics, all in one JVM (one kafka-acls run per binding costs 2-3 s each). Idempotent:
// existing ACLs and topics are left as they are.
//
// usage: SecureSetup <bootstrap> <admin-client.properties> <partitions> <timeout-seconds>
//                    <service-user> <prefix,...> <topic>[:<key>=<value>[,...]]...
// exit 0: done; exit 2: the broker did not answer in time; exit 1: any other failure

import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class SecureSetup {
    public static void main(String[] args) throws Exception {
        if (args.length < 6) {
            System.err.println("usage: SecureSetup <bootstrap> <props> <partitions> <timeout-s> <user> <prefixes> <topic>...");
            System.exit(1);
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[1])) {
            props.load(in);
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        int partitions = Integer.parseInt(args[2]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[3]));
        String principal = "User:" + args[4];
        String[] prefixes = args[5].split(",");

        List<AclBinding> acls = new ArrayList<>();
        for (String prefix : prefixes) {
            for (AclOperation op : new AclOperation[] {AclOperation.READ, AclOperation.WRITE,
                    AclOperation.DESCRIBE, AclOperation.CREATE, AclOperation.DESCRIBE_CONFIGS}) {
                acls.add(allow(ResourceType.TOPIC, prefix, principal, op));
            }
            for (AclOperation op : new AclOperation[] {AclOperation.READ, AclOperation.DESCRIBE}) {
                acls.add(allow(ResourceType.GROUP, prefix, principal, op));
            }
            for (AclOperation op : new AclOperation[] {AclOperation.WRITE, AclOperation.DESCRIBE}) {
                acls.add(allow(ResourceType.TRANSACTIONAL_ID, prefix, principal, op));
            }
        }
        acls.add(new AclBinding(
                new ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL),
                new AccessControlEntry(principal, "*", AclOperation.IDEMPOTENT_WRITE, AclPermissionType.ALLOW)));

        List<NewTopic> topics = new ArrayList<>();
        for (int i = 6; i < args.length; i++) {
            String[] nameAndConfigs = args[i].split(":", 2);
            Map<String, String> configs = new HashMap<>();
            if (nameAndConfigs.length == 2 && !nameAndConfigs[1].isEmpty()) {
                for (String kv : nameAndConfigs[1].split(",")) {
                    String[] p = kv.split("=", 2);
                    configs.put(p[0], p[1]);
                }
            }
            topics.add(new NewTopic(nameAndConfigs[0], partitions, (short) 1).configs(configs));
        }

        try (Admin admin = Admin.create(props)) {
            Throwable last = null;
            while (System.nanoTime() < deadline) {
                try {
                    admin.createAcls(acls).all().get(10, TimeUnit.SECONDS);
                    for (NewTopic t : topics) {
                        try {
                            admin.createTopics(List.of(t)).all().get(10, TimeUnit.SECONDS);
                        } catch (ExecutionException e) {
                            if (!(e.getCause() instanceof TopicExistsException)) {
                                throw e;
                            }
                        }
                    }
                    System.out.println("acls: " + acls.size() + " bindings for " + principal + "; topics: " + topics.size());
                    return;
                } catch (Exception e) {
                    last = e;
                    Thread.sleep(1000);
                }
            }
            System.err.println("secure setup did not complete in time: " + last);
            System.exit(2);
        }
    }

    private static AclBinding allow(ResourceType type, String prefix, String principal, AclOperation op) {
        return new AclBinding(new ResourcePattern(type, prefix, PatternType.PREFIXED),
                new AccessControlEntry(principal, "*", op, AclPermissionType.ALLOW));
    }
}
