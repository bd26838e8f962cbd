-- Per latent: the examples it got, and a flag with the reason when a split is short of its target
-- (a latent that fires in too few contexts is kept, never silently dropped).
WITH counts AS (
    SELECT latent,
        count(*) FILTER (split = 'train' AND kind != 'random') AS n_train,
        count(*) FILTER (split = 'test' AND kind = 'quantile') AS n_test_activating,
        count(*) FILTER (split = 'test' AND kind = 'random') AS n_test_random,
        count(*) FILTER (split = 'train' AND kind = 'random') AS n_train_random,
        count(*) FILTER (kind = 'neighbour') AS n_test_neighbour
    FROM examples GROUP BY latent
)
SELECT latent, n_train, n_train_random, n_test_activating, n_test_random, n_test_neighbour,
    n_train >= $n_train AND n_test_activating >= $n_test AND n_test_random >= $n_random
        AND n_train_random >= $n_train_random AS complete,
    concat_ws('; ',
        CASE WHEN n_train < $n_train
             THEN format('{} of {} train windows: fires in too few contexts', n_train, $n_train) END,
        CASE WHEN n_test_activating < $n_test
             THEN format('{} of {} activating test windows', n_test_activating, $n_test) END,
        -- silent windows never share a token with the other split's windows, so a latent can run short of
        -- them where the few silent stretches it leaves sit next to those windows
        CASE WHEN n_test_random < $n_random
             THEN format('{} of {} non-activating windows: fires almost everywhere outside its train windows',
                         n_test_random, $n_random) END,
        CASE WHEN n_train_random < $n_train_random
             THEN format('{} of {} silent train windows: fires almost everywhere outside its test windows',
                         n_train_random, $n_train_random) END
    ) AS reason
FROM counts
ORDER BY latent
